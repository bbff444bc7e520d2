"""A command on a terminal of its own for tests: a fresh pty as its controlling terminal (as a login shell has),
and reading what it shows there."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pty
import select
import subprocess
import termios
import time
from collections.abc import Iterator, Mapping


def _controlling_tty() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@contextlib.contextmanager
def on_a_terminal(argv: list[str], env: Mapping[str, str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """argv as the leader of a new session whose controlling terminal is a fresh pty; yields (process, the pty's
    master end). The process is killed and reaped, the pty closed, at the end."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=dict(env),
                            preexec_fn=_controlling_tty)
    os.close(slave)
    try:
        yield proc, master
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        os.close(master)


def read_until(master: int, text: str | None, timeout: float = 60.0) -> str:
    """What the terminal showed until `text` appeared (AssertionError when it did not within `timeout`), or until
    every end of the pty closed (with `text` None: until then)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text is None or text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text or 'end'!r} on the terminal within {timeout:g}s"
        if select.select([master], [], [], left)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError as exc:  # EIO: every end of the pty closed
                assert exc.errno == errno.EIO
                break
            seen += chunk
    return seen.decode(errors="replace")
