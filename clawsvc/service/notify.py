"""sd_notify for the supervisor loop: READY/STATUS/WATCHDOG/RELOADING/STOPPING; a cheap no-op without systemd."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

from sdnotify import SystemdNotifier

from clawsvc.text import printable

log = logging.getLogger("clawsvc.service.notify")

STATUS_MAX = 1000  # characters; `systemctl status` shows one line, the journal keeps the rest of the story


def status_text(text: str) -> str:
    """One printable line, encoded so sdnotify's Latin-1 encoder puts UTF-8 bytes on the wire.

    systemd ignores a STATUS= that is not valid UTF-8, and sdnotify encodes Latin-1 (raising on anything
    beyond U+00FF), so the UTF-8 bytes are smuggled through as the Latin-1 characters of the same values.
    """
    line = printable(text)
    if len(line) > STATUS_MAX:
        line = line[: STATUS_MAX - 3] + "..."
    return line.encode("utf-8", "replace").decode("latin-1")


class _Notifier(SystemdNotifier):
    """sdnotify's notifier, connected to the address we were given rather than the process environment."""

    def __init__(self, address: str) -> None:
        self.debug = True
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.socket.connect("\0" + address[1:] if address.startswith("@") else address)
        except OSError:
            self.socket.close()
            raise

    def close(self) -> None:
        self.socket.close()


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid.strip() != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """What the supervisor tells systemd. Send errors are logged once and never raised."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        self.address = environ.get("NOTIFY_SOCKET") or None
        self.enabled = self.address is not None
        self.watchdog_interval = _watchdog_interval(environ) if self.enabled else None
        self._sender: _Notifier | None = None
        self._failing = False
        self._lock = threading.Lock()

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1" if status is None else f"READY=1\nSTATUS={status_text(status)}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={status_text(text)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        self._send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def reloading(self) -> None:
        # systemd (Type=notify-reload) pairs RELOADING=1 with the monotonic time it was sent, in one datagram
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                self._sender.close()
                self._sender = None

    def _send(self, message: str) -> None:
        if self.address is None:
            return
        with self._lock:
            try:
                if self._sender is None:
                    self._sender = _Notifier(self.address)
                self._sender.notify(message)
            except OSError as exc:
                self._sender_failed(exc)
                return
            if self._failing:
                self._failing = False
                log.info("systemd notify socket %s is reachable again", self.address)

    def _sender_failed(self, exc: OSError) -> None:
        # reconnect on the next call: systemd re-binds the socket on daemon-reexec
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if not self._failing:
            self._failing = True
            log.warning("cannot notify systemd at %s (%s); readiness and watchdog pings are not reaching it, "
                        "will keep trying silently", self.address, exc.strerror or exc)
