"""Unix-socket listeners: stale files, live ones, file mode, cleanup, peer credentials."""

from __future__ import annotations

import errno
import functools
import logging
import os
import socket
import stat
import struct
import sys
import textwrap
from typing import Any

import pytest
import trio
from trio._socket import _SocketType

import trionet
from trionet import AccessPolicy
from trionet._server import _admission, _listeners
from trionet.testing import custom_socket_class

ServerFactory = Any


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def unix_client(path: str) -> trionet.Connection:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.fail_after(5):
            await sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return trionet.Connection(sock)


async def assert_refused(path: str) -> None:
    """Connect to ``path`` and see the server close (or reset) before any byte."""
    conn = await unix_client(path)
    async with conn:
        with trio.fail_after(5):
            try:
                data = await conn.receive_some()
            except trio.BrokenResourceError:
                data = b""
        assert data == b""


async def assert_echoes(path: str) -> None:
    conn = await unix_client(path)
    async with conn:
        await conn.send_all(b"hello")
        with trio.fail_after(5):
            assert await conn.receive_some() == b"hello"


def make_stale_socket_file(path: str) -> None:
    """What a crashed server leaves behind: a socket file nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


async def test_stale_socket_file_is_replaced(
    trionet_server: ServerFactory, unused_unix_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trionet")
    make_stale_socket_file(unused_unix_path)
    # bind() on the stale file would fail with EADDRINUSE: serving proves it was replaced.
    server = await trionet_server(echo, f"unix:{unused_unix_path}")
    assert server.addresses == [trionet.UnixAddress(unused_unix_path)]
    await assert_echoes(unused_unix_path)
    assert any("stale" in r.getMessage() for r in caplog.records)


async def test_live_socket_is_refused_with_address_in_use(
    trionet_server: ServerFactory, unused_unix_path: str, nursery: trio.Nursery
) -> None:
    await trionet_server(echo, f"unix:{unused_unix_path}")
    inode = os.stat(unused_unix_path).st_ino

    async def never(conn: trionet.Connection) -> None:  # pragma: no cover
        raise AssertionError("the second server must not start")

    # Bare AddressInUse from serve (through nursery.start) ...
    with pytest.raises(trionet.AddressInUse) as info:
        await nursery.start(functools.partial(trionet.serve, never, f"unix:{unused_unix_path}"))
    assert unused_unix_path in str(info.value)
    # ... and from open_server.
    with pytest.raises(trionet.AddressInUse):
        async with trionet.open_server(never, f"unix:{unused_unix_path}"):
            raise AssertionError("unreachable")  # pragma: no cover
    # The live server's file was left alone, and it still serves.
    assert os.stat(unused_unix_path).st_ino == inode
    await assert_echoes(unused_unix_path)


async def test_a_path_that_is_not_a_socket_is_never_removed(unused_unix_path: str) -> None:
    path = trio.Path(unused_unix_path)
    await path.write_text("precious data")
    with pytest.raises(trionet.ListenError) as info:
        async with trionet.open_server(echo, f"unix:{unused_unix_path}"):
            raise AssertionError("unreachable")  # pragma: no cover
    assert not isinstance(info.value, trionet.AddressInUse)
    assert await path.read_text() == "precious data"


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o666])
async def test_unix_mode_is_applied(
    trionet_server: ServerFactory, unused_unix_path: str, mode: int
) -> None:
    await trionet_server(echo, f"unix:{unused_unix_path}", unix_mode=mode)
    assert stat.S_IMODE(os.stat(unused_unix_path).st_mode) == mode
    await assert_echoes(unused_unix_path)


async def test_file_removed_at_shutdown_and_new_connects_fail(unused_unix_path: str) -> None:
    with trio.fail_after(5):
        async with trionet.open_server(echo, f"unix:{unused_unix_path}", shutdown_grace=1):
            assert await trio.Path(unused_unix_path).exists()
            await assert_echoes(unused_unix_path)
    assert not await trio.Path(unused_unix_path).exists()
    with pytest.raises(OSError):
        await unix_client(unused_unix_path)


async def test_file_of_someone_else_is_not_removed_at_shutdown(unused_unix_path: str) -> None:
    with trio.fail_after(5):
        async with trionet.open_server(echo, f"unix:{unused_unix_path}", shutdown_grace=1):
            # Another process replaced our socket file meanwhile (same path,
            # another inode): it is theirs now, not ours to delete.
            os.unlink(unused_unix_path)
            make_stale_socket_file(unused_unix_path)
            theirs = os.stat(unused_unix_path).st_ino
    assert os.stat(unused_unix_path).st_ino == theirs


async def test_abstract_names_have_no_file_and_can_be_in_use(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    name = f"@trionet-test-{os.getpid()}-{id(nursery)}"
    server = await trionet_server(echo, f"unix:{name}")
    assert server.addresses == [trionet.UnixAddress(name)]
    conn = trio.socket.socket(socket.AF_UNIX)
    with conn:
        await conn.connect(b"\0" + name[1:].encode())
        await conn.send(b"abstract")
        with trio.fail_after(5):
            assert await conn.recv(100) == b"abstract"
    with pytest.raises(trionet.AddressInUse):
        await nursery.start(functools.partial(trionet.serve, echo, f"unix:{name}"))


async def test_probe_without_permission_is_a_listen_error_not_address_in_use(
    unused_unix_path: str,
) -> None:
    # Probing needs write permission on the socket file.  EACCES says nothing
    # about whether anybody listens: report it as what it is, and leave the
    # file alone.  (As root permissions never deny, so the probe's connect
    # is made to fail through Trio's socket-factory hook.)
    make_stale_socket_file(unused_unix_path)
    inode = os.stat(unused_unix_path).st_ino

    class DeniedConnect(_SocketType):
        async def connect(self, address: Any) -> None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    with custom_socket_class(DeniedConnect), pytest.raises(trionet.ListenError) as info:
        async with trionet.open_server(echo, f"unix:{unused_unix_path}"):
            raise AssertionError("unreachable")  # pragma: no cover
    assert not isinstance(info.value, trionet.AddressInUse)
    assert info.value.errno == errno.EACCES
    assert "Permission denied" in str(info.value)
    assert os.stat(unused_unix_path).st_ino == inode  # untouched


async def test_a_file_replaced_while_we_probe_is_not_removed(
    unused_unix_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two servers start at once on the same stale path: both probe it and
    # find it dead.  The other one is quicker -- it replaces the file with
    # its live socket while our probe is in flight.  We must not then unlink
    # *its* file.
    make_stale_socket_file(unused_unix_path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    real_probe = _listeners._probe_unix

    async def racing_probe(path: str, address: trionet.UnixAddress) -> bool:
        alive = await real_probe(path, address)
        os.unlink(path)
        other.bind(path)
        other.listen()
        return alive

    monkeypatch.setattr(_listeners, "_probe_unix", racing_probe)
    with other:
        with pytest.raises(trionet.AddressInUse, match="replaced while we probed"):
            async with trionet.open_server(echo, f"unix:{unused_unix_path}"):
                raise AssertionError("unreachable")  # pragma: no cover
        # The other server's socket is still in place and reachable.
        client = await unix_client(unused_unix_path)
        accepted, _ = other.accept()
        accepted.close()
        await client.aclose()


async def test_relative_path_is_removed_even_after_a_chdir(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    with trio.fail_after(5):
        async with trionet.open_server(echo, "unix:rel.sock", shutdown_grace=1) as server:
            # Addresses show the path as given ...
            assert server.addresses == [trionet.UnixAddress("rel.sock")]
            await assert_echoes(str(first / "rel.sock"))
            # ... but the working directory changes, and another socket file
            # with the same relative name lives there.
            monkeypatch.chdir(second)
            make_stale_socket_file(str(second / "rel.sock"))
            theirs = os.stat(second / "rel.sock").st_ino
    assert not (first / "rel.sock").exists()  # ours: removed
    assert os.stat(second / "rel.sock").st_ino == theirs  # not ours: untouched


def test_peer_credentials_uids_are_unsigned() -> None:
    # uid_t and gid_t are unsigned: a uid above 2**31 must not come out negative.
    big_uid, big_gid = 2**32 - 2, 2**31 + 5

    class FakeUnixSocket:
        def getsockopt(self, level: int, option: int, size: int) -> bytes:
            assert size == struct.calcsize("iII")
            return struct.pack("iII", 4242, big_uid, big_gid)

    assert _admission.peer_credentials(FakeUnixSocket()) == (4242, big_uid, big_gid)
    policy = AccessPolicy(unix_uids=[big_uid])
    assert policy.allows(trionet.UnixAddress(""), (4242, big_uid, big_gid))


# ----------------------------------------------------------------------
# Peer credentials and unix_uids


async def test_peer_credentials_and_unix_uids_admit_the_right_uid(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    creds: list[tuple[int, int, int] | None] = []

    async def handler(conn: trionet.Connection) -> None:
        creds.append(conn.peer_credentials)
        creds.append(conn.info().peer_credentials)
        await echo(conn)

    uid = os.getuid()
    server = await trionet_server(
        handler, f"unix:{unused_unix_path}", access=AccessPolicy(unix_uids=[uid])
    )
    await assert_echoes(unused_unix_path)
    assert creds == [(os.getpid(), uid, os.getgid())] * 2
    assert server.stats.rejected_access == 0


async def test_unix_uids_refuses_other_uids(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    async def handler(conn: trionet.Connection) -> None:  # pragma: no cover
        raise AssertionError("a refused uid must not reach the handler")

    server = await trionet_server(
        handler, f"unix:{unused_unix_path}", access=AccessPolicy(unix_uids=[os.getuid() + 12345])
    )
    await assert_refused(unused_unix_path)
    assert server.stats.rejected_access == 1


async def test_callable_access_sees_unix_credentials(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    seen: list[trionet.ConnectionInfo] = []

    def check(info: trionet.ConnectionInfo) -> bool:
        seen.append(info)
        return True

    await trionet_server(echo, f"unix:{unused_unix_path}", access=check)
    await assert_echoes(unused_unix_path)
    assert len(seen) == 1
    assert seen[0].peer_credentials == (os.getpid(), os.getuid(), os.getgid())


_OTHER_UID = 12345

_CLIENT_AS_OTHER_UID = textwrap.dedent(
    """
    import os, socket, sys
    os.setgid({uid})
    os.setuid({uid})
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sys.argv[1])
    try:
        s.sendall(b"from %d" % os.getuid())
        print(s.recv(100).decode() or "REFUSED")
    except (BrokenPipeError, ConnectionResetError):
        print("REFUSED")
    """
).format(uid=_OTHER_UID)


async def _run_client_as_other_uid(path: str) -> str:
    result = await trio.run_process(
        [sys.executable, "-c", _CLIENT_AS_OTHER_UID, path],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return str(result.stdout.decode().strip())


# CI runs the suite as root, so this runs there; only a developer's
# unprivileged run skips it, and says why.
@pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to switch uid (CI runs as root, so it runs there)"
)
async def test_unix_uids_with_a_real_other_uid(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    # The other uid must be able to reach the socket: open up its directory.
    os.chmod(os.path.dirname(unused_unix_path), 0o755)
    creds: list[tuple[int, int, int] | None] = []

    async def handler(conn: trionet.Connection) -> None:
        creds.append(conn.peer_credentials)
        await echo(conn)

    with trio.fail_after(20):
        server = await trionet_server(
            handler,
            f"unix:{unused_unix_path}",
            unix_mode=0o666,
            access=AccessPolicy(unix_uids=[_OTHER_UID]),
        )
        assert await _run_client_as_other_uid(unused_unix_path) == f"from {_OTHER_UID}"
        assert len(creds) == 1 and creds[0] is not None
        assert creds[0][1:] == (_OTHER_UID, _OTHER_UID)
        # Our own uid (root) is not on the list.
        await assert_refused(unused_unix_path)
        assert server.stats.rejected_access == 1
        await server.shutdown(1)

        # And the other way round: only root admitted, the other uid refused.
        unused = unused_unix_path + "2"
        server = await trionet_server(
            handler, f"unix:{unused}", unix_mode=0o666, access=AccessPolicy(unix_uids=[0])
        )
        assert await _run_client_as_other_uid(unused) == "REFUSED"
        assert server.stats.rejected_access == 1
        assert len(creds) == 1
