"""Where the metrics go besides `clawsvc metrics`: an HTTP endpoint (metrics.listen, GET /metrics) and a file for
node_exporter's textfile collector (metrics.textfile). Each has one thread from clawsvc.threads; both follow the
config across reloads (Outputs) and never fail the service: a port that cannot be bound or a file that cannot be
written is logged, and the rest goes on.

The endpoint is a listening socket other local users reach: one request at a time, READ_TIMEOUT for its request
head (at most HEAD_MAX bytes), WRITE_TIMEOUT for the answer; nothing is read past the head, only GET and HEAD of
/metrics are answered."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from clawsvc.atomicfile import write_atomically
from clawsvc.config import Config
from clawsvc.config.monitoring import LOOPBACK_NAMES, split_listen
from clawsvc.service.metrics import CONTENT_TYPE
from clawsvc.threads import start_thread

log = logging.getLogger("clawsvc.metrics")
Render = Callable[[], str]
READ_TIMEOUT = 2.0
WRITE_TIMEOUT = 5.0
HEAD_MAX = 8192
REFRESH = 60.0  # the textfile is written at least this often, so a stale one shows clawsvc is gone
MIN_GAP = 1.0  # and at most once a second, however often things change
FILE_MODE = 0o644  # node_exporter runs as another user; the metrics hold nothing secret


def _answer(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + (b"" if head else body)


def _read_head(conn: socket.socket) -> bytes | None:
    """The request head (up to the blank line), within READ_TIMEOUT; None when it does not come or is too big."""
    deadline = time.monotonic() + READ_TIMEOUT
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(head) > HEAD_MAX:
            return None
        conn.settimeout(remaining)
        chunk = conn.recv(HEAD_MAX)
        if not chunk:
            return head or None
        head += chunk
    return head


class MetricsServer:
    """GET /metrics on `address` (HOST:PORT)."""

    def __init__(self, address: str, render: Render) -> None:
        self.address = address
        self._render = render
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        host, port = split_listen(self.address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._thread = start_thread("metrics-http", self._serve)
        import ipaddress  # only with an endpoint

        exposed = "" if host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback else \
            "; it is not loopback: firewall it"
        log.info("metrics on http://%s/metrics%s", self.address, exposed)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(READ_TIMEOUT + WRITE_TIMEOUT + 1.0)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _serve(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if self._wake_r in ready:
                    return
                try:
                    conn, _ = self._listener.accept()
                except OSError as exc:  # EMFILE and friends: back off instead of spinning
                    log.warning("metrics endpoint %s: accept failed: %s", self.address, exc)
                    self._closed.wait(1.0)
                    continue
                with conn:
                    try:
                        self._handle(conn)
                    except OSError as exc:
                        log.debug("metrics endpoint: a client went away: %s", exc)
                    except Exception:  # a bug here must not end the endpoint
                        log.exception("metrics endpoint %s: unexpected error while answering", self.address)

    def _handle(self, conn: socket.socket) -> None:
        head = _read_head(conn)
        if head is None:
            return
        words = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        method, target = (words[0], words[1]) if len(words) >= 2 else (b"", b"")
        if method not in (b"GET", b"HEAD"):
            reply = _answer("405 Method Not Allowed", b"only GET /metrics\n")
        elif target.split(b"?", 1)[0] != b"/metrics":
            reply = _answer("404 Not Found", b"clawsvc serves its metrics at /metrics\n")
        else:
            reply = _answer("200 OK", self._render().encode("utf-8"), CONTENT_TYPE, head=method == b"HEAD")
        conn.settimeout(WRITE_TIMEOUT)
        conn.sendall(reply)


class TextfileWriter:
    """metrics.textfile, rewritten when told something changed (at most once a second) and every REFRESH seconds."""

    def __init__(self, path: Path, render: Render) -> None:
        self.path = path
        self._render = render
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = start_thread("metrics-file", self._loop)

    def changed(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(WRITE_TIMEOUT)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self._write()
            self._stop.wait(MIN_GAP)
            self._wake.wait(REFRESH - MIN_GAP)

    def _write(self) -> None:
        try:
            write_atomically(self.path, self._render().encode("utf-8"), FILE_MODE)
        except OSError as exc:
            if not self._failing:
                log.warning("cannot write metrics.textfile %s: %s; retrying every %gs (the system unit writes only "
                            "its own directories: add a ReadWritePaths= drop-in)", self.path,
                            exc.strerror or exc, REFRESH)
            self._failing = True
            return
        if self._failing:
            log.info("metrics.textfile %s is written again", self.path)
        self._failing = False


class Outputs:
    """The endpoint and the file the config asks for, following it across reloads; never raises."""

    def __init__(self, render: Render) -> None:
        self._render = render
        self._server: MetricsServer | None = None
        self._writer: TextfileWriter | None = None

    def open(self, config: Config) -> None:
        if config.metrics.listen is not None:
            server = MetricsServer(config.metrics.listen, self._render)
            try:
                server.start()
                self._server = server
            except OSError as exc:
                server.close()
                log.error("cannot serve metrics on %s: %s; `clawsvc metrics` still works; fix metrics.listen and "
                          "reload", config.metrics.listen, exc.strerror or exc)
        if config.metrics.textfile is not None:
            self._writer = TextfileWriter(config.metrics.textfile, self._render)
            self._writer.start()

    def reload(self, old: Config, new: Config) -> None:
        if old.metrics != new.metrics:
            self.close()
            self.open(new)

    def changed(self) -> None:
        writer = self._writer
        if writer is not None:
            writer.changed()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
