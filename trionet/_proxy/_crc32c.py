"""CRC32C (Castagnoli), for the PROXY v2 CRC32C TLV; table-driven, no Trio import.

Only headers that carry the TLV pay for it (HAProxy sends it with
``proxy-v2-options crc32c``); headers are at most a few hundred bytes.
"""

from __future__ import annotations

__all__ = ["crc32c"]


def _table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """The CRC32C of ``data`` (``crc32c(b"123456789") == 0xE3069283``)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
