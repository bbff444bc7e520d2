"""A fake systemd notify endpoint: a real AF_UNIX datagram socket whose datagrams a reader thread collects.

    with NotifyPeer(tmp_path / "notify.sock") as peer:
        env = {"NOTIFY_SOCKET": peer.address, "WATCHDOG_USEC": "1000000"}
        ...  # start the process under test with env
        peer.wait_for(r"^READY=1", timeout=30)

Every datagram is kept with the monotonic time it arrived, so tests can order and count them
(e.g. WATCHDOG=1 over a window). `address` may be a path or an abstract name spelled "@name".
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class Datagram:
    at: float  # time.monotonic() when it was read
    text: str

    def fields(self) -> dict[str, str]:
        """KEY=VALUE lines as a dict (a later duplicate key wins, as in systemd)."""
        return dict(line.split("=", 1) for line in self.text.split("\n") if "=" in line)


Match = str | re.Pattern[str] | Callable[[Datagram], bool]
Gone = Callable[[], str | None]  # as waiting.Gone (bench imports this module as tests.notify_peer, alone)
GONE_CHECK = 0.1  # how often a wait looks whether the sender has exited


def _predicate(match: Match) -> Callable[[Datagram], bool]:
    if callable(match) and not isinstance(match, re.Pattern):
        return match
    pattern = re.compile(match, re.MULTILINE) if isinstance(match, str) else match
    return lambda datagram: pattern.search(datagram.text) is not None


class NotifyPeer:
    """Binds the socket at once; the reader thread runs until close()."""

    def __init__(self, address: str | Path) -> None:
        self.address = str(address)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.address[1:] if self.address.startswith("@") else self.address)
        self._sock.setblocking(False)
        self._datagrams: list[Datagram] = []
        self._gone: Gone | None = None
        self._changed = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="clawsvc-test-notify", daemon=True)
        self._thread.start()

    def watch(self, gone: Gone) -> None:
        """Waits give up as soon as `gone` says the sender has exited (after reading all it sent)."""
        self._gone = gone

    def _read(self) -> None:
        while not self._closed.is_set():
            readable, _, _ = select.select([self._sock], [], [], 0.1)
            if readable:
                with self._changed:
                    self._drain()

    def _drain(self) -> None:
        """Take every datagram queued on the socket, with the lock held: the reader thread and every look at the
        datagrams drain, in order, so a look sees all that was sent before it (a sender that just exited too)."""
        while self._sock.fileno() >= 0:  # not closed
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return
            self._datagrams.append(Datagram(time.monotonic(), data.decode("utf-8", "replace")))
            self._changed.notify_all()

    def datagrams(self) -> list[Datagram]:
        with self._changed:
            self._drain()
            return list(self._datagrams)

    def messages(self) -> list[str]:
        return [datagram.text for datagram in self.datagrams()]

    def mark(self) -> int:
        """An index to pass as `since`: only datagrams arriving after this call are considered."""
        with self._changed:
            self._drain()
            return len(self._datagrams)

    def find(self, match: Match, since: int = 0) -> list[Datagram]:
        test = _predicate(match)
        return [datagram for datagram in self.datagrams()[since:] if test(datagram)]

    def wait_for(self, match: Match, timeout: float, since: int = 0) -> Datagram:
        """The first datagram at index >= since that matches (a regex searched per line, or a predicate)."""
        test = _predicate(match)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                ended = self._gone() if self._gone is not None else None  # first: then all it sent is queued
                self._drain()
                found = next((datagram for datagram in self._datagrams[since:] if test(datagram)), None)
                if found is not None:
                    return found
                if ended is not None:
                    raise AssertionError(f"no notify datagram matching {match!r}: {ended}\n"
                                         f"last datagrams:\n{self._tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no notify datagram matching {match!r} within {timeout}s; last ones:\n"
                                         f"{self._tail()}")
                self._changed.wait(remaining if self._gone is None else min(remaining, GONE_CHECK))

    def _tail(self) -> str:
        return "\n---\n".join(d.text for d in self._datagrams[-15:])

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)

    def __enter__(self) -> NotifyPeer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
