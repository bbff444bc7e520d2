"""A fake systemd notify socket: receives sd_notify datagrams and timestamps each one on arrival."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Notice:
    """One datagram: arrival time (time.monotonic) and its KEY=VALUE fields."""

    at: float
    fields: dict[str, str]

    @property
    def status(self) -> str | None:
        return self.fields.get("STATUS")

    @property
    def ready(self) -> bool:
        return self.fields.get("READY") == "1"


def parse(data: bytes) -> dict[str, str]:
    fields = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


class NotifyPeer:
    """Bind a datagram socket at `path`; a daemon thread (clawsvc-bench-notify) records every datagram."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.notices: list[Notice] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="clawsvc-bench-notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            notice = Notice(time.monotonic(), parse(data))
            with self._cond:
                self.notices.append(notice)
                self._cond.notify_all()

    def mark(self) -> int:
        """Index to search from: only notices that arrive after this call."""
        with self._cond:
            return len(self.notices)

    def wait_for(self, match: Callable[[Notice], bool], timeout: float, start: int = 0) -> Notice:
        """The first notice from index `start` on that matches; TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for notice in self.notices[start:]:
                    if match(notice):
                        return notice
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = self.notices[-1].status if self.notices else None
                    raise TimeoutError(f"no matching sd_notify message within {timeout:g}s (last STATUS: {last})")
                self._cond.wait(remaining)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(1.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> NotifyPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
