"""Subprocess helpers for the command-line tests: ``python -m trionet`` read line by line.

Used by ``test_cli.py`` and ``test_cli_tls.py`` (the ``cli`` fixture lives in
``conftest.py``).  Every wait is bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trionet
from trionet._cli import main

TIMEOUT = 10.0


################################################################
# Subprocess helpers
################################################################


@contextlib.contextmanager
def sigint_default_in_children() -> Iterator[None]:
    """Children started inside get SIGINT's default action, even if we ignore it.

    A test run started in the background by a non-interactive shell (``make
    test &`` in a script) has SIGINT ignored.  exec() keeps an ignored signal
    ignored -- and Python, as Unix programs conventionally do, leaves it so --
    but resets a handled one to its default action.  So for just the moment
    of the fork and exec we handle it: ``trionet connect`` then reacts to
    Ctrl-C as it does when typed in an interactive shell.
    """
    inherited = signal.getsignal(signal.SIGINT)
    if inherited != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, inherited)


class CLIProcess:
    """``python -m trionet ARGS`` with its stdout and stderr read line by line in threads.

    ``invoke`` replaces ``-m trionet`` (e.g. ``-c CODE``).
    """

    def __init__(
        self,
        args: tuple[str, ...],
        cwd: Path | None,
        stdin: Any,
        invoke: tuple[str, ...] = ("-m", "trionet"),
    ) -> None:
        self.args = args
        with sigint_default_in_children():
            self.popen = subprocess.Popen(
                [sys.executable, *invoke, *args],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._err_lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True)
            for stream, lines in (
                (self.popen.stdout, self._lines),
                (self.popen.stderr, self._err_lines),
            )
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
        for raw in stream:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    def _next(self, lines: queue.Queue[str | None], what: str) -> str | None:
        try:
            return lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no {what} from trionet {self.args} in {TIMEOUT}s") from None

    def line(self) -> str | None:
        """The next stdout line (None at EOF); fails after TIMEOUT seconds."""
        return self._next(self._lines, "output")

    def err_line(self) -> str | None:
        """The next stderr line (None at EOF); fails after TIMEOUT seconds."""
        return self._next(self._err_lines, "stderr output")

    def listening(self, count: int = 1) -> list[trionet.Address]:
        """Wait for ``count`` "listening on" lines; the addresses they name."""
        addresses = []
        for _ in range(count):
            line = self.line()
            if line is None:
                rc, _out, err = self.finish()
                raise AssertionError(f"trionet exited {rc} before listening: {err}")
            assert line.startswith("listening on "), line
            addresses.append(trionet.parse_address(line.removeprefix("listening on ").strip()))
        return addresses

    def port(self) -> int:
        (address,) = self.listening()
        assert isinstance(address, trionet.TCPAddress)
        assert address.host == "127.0.0.1"
        return address.port

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        """Wait for exit: (exit status, rest of stdout, rest of stderr).

        "Rest": the lines ``line()``/``err_line()`` have not returned yet.
        """
        rc = self.popen.wait(timeout)
        rests = []
        for reader, lines in zip(self._readers, (self._lines, self._err_lines), strict=True):
            reader.join(timeout)
            rest = []
            while (line := lines.get_nowait()) is not None:
                rest.append(line)
            rests.append("".join(rest))
        return rc, rests[0], rests[1]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.popen.send_signal(sig)
        return self.finish()


Start = Callable[..., CLIProcess]


def cli_processes() -> Iterator[Start]:
    """Start ``python -m trionet`` processes; every one still running is killed afterwards."""
    started: list[CLIProcess] = []

    def start(
        *args: str,
        cwd: Path | None = None,
        stdin: Any = subprocess.DEVNULL,
        invoke: tuple[str, ...] = ("-m", "trionet"),
    ) -> CLIProcess:
        proc = CLIProcess(args, cwd, stdin, invoke)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(TIMEOUT)
        for stream in (proc.popen.stdin, proc.popen.stdout, proc.popen.stderr):
            if stream is not None:
                stream.close()


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("trionet: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors and --help
        assert isinstance(exc.code, int)
        return exc.code
