"""What every part of a virtual socket shares: its states, its errors, how an address is written."""

from __future__ import annotations

import os

__all__ = ["BOUND", "CONNECTED", "CONNECTING", "LISTENING", "NEW", "format_address", "oserror"]

#: A virtual socket's states.
NEW, BOUND, LISTENING, CONNECTING, CONNECTED = range(5)


def oserror(code: int, detail: str = "") -> OSError:
    """``OSError(code, "strerror (detail)")``, as the kernel's errors read."""
    message = os.strerror(code)
    return OSError(code, f"{message} ({detail})" if detail else message)


def format_address(address: tuple[str, int]) -> str:
    """``host:port``, or ``[host]:port`` for IPv6 (the trace's keys)."""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
