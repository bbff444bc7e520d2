"""Where the metrics go besides `clawsvc metrics`: an HTTP endpoint (metrics.listen, GET /metrics) and a file for
node_exporter's textfile collector (metrics.textfile). Each has one thread from clawsvc.threads; both follow the
config across reloads (Outputs) and never fail the service: a port that cannot be bound or a file that cannot be
written is logged, and the rest goes on.

The endpoint is a listening socket other local users reach: every connection is served at once by one thread (at
most MAX_CLIENTS, the oldest dropped for a new one), each with READ_TIMEOUT for its request head (at most HEAD_MAX
bytes) and WRITE_TIMEOUT for the answer, so clients that connect and dawdle cannot keep Prometheus waiting; nothing
is read past the head, only GET and HEAD of /metrics are answered."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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
MAX_CLIENTS = 64  # connections served at once; a new one past this drops the oldest
BACKLOG = 128
ACCEPT_PAUSE = 1.0
CLOSE_WAIT = 2.0  # the endpoint's thread ends at once when told; this only bounds a join that should not wait
REFRESH = 60.0  # the textfile is written at least this often, so a stale one shows clawsvc is gone
MIN_GAP = 1.0  # and at most once a second, however often things change
FILE_MODE = 0o644  # node_exporter runs as another user; the metrics hold nothing secret


def _answer(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8", head: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + (b"" if head else body)


@dataclass
class _Client:
    """One connection: its request head while it comes, then the answer while it goes out, before `deadline`."""
    sock: socket.socket
    deadline: float
    head: bytes = b""
    reply: bytes | None = None


def _request_line(head: bytes) -> tuple[bytes, bytes]:
    words = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    return (words[0], words[1]) if len(words) >= 2 else (b"", b"")


class MetricsServer:
    """GET /metrics on `address` (HOST:PORT): every client at once on one thread (non-blocking sockets, one
    selector), so a client that dawdles costs nobody else anything; at most MAX_CLIENTS, the oldest dropped to
    make room."""

    def __init__(self, address: str, render: Render) -> None:
        self.address = address
        self._render = render
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._clients: dict[socket.socket, _Client] = {}
        self._paused_until: float | None = None  # accepting again then, after accept() failed

    def start(self) -> None:
        host, port = split_listen(self.address)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(BACKLOG)
            listener.setblocking(False)
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
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT)
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _serve(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            try:
                self._loop(selector)
            finally:
                for client in list(self._clients.values()):
                    self._drop(selector, client)

    def _loop(self, selector: selectors.BaseSelector) -> None:
        while True:
            now = time.monotonic()
            for client in [c for c in self._clients.values() if c.deadline <= now]:
                self._drop(selector, client)
            if self._paused_until is not None and self._paused_until <= now:
                self._paused_until = None
                selector.register(self._listener, selectors.EVENT_READ)
            wait = min([c.deadline for c in self._clients.values()] + [self._paused_until or now + REFRESH]) - now
            for key, _ in selector.select(max(wait, 0.0)):
                if key.fileobj is self._wake_r:
                    return
                if key.fileobj is self._listener:
                    self._accept(selector)
                elif (client := self._clients.get(key.fileobj)) is not None:  # type: ignore[call-overload]
                    self._step(selector, client)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE and friends: stop accepting for a while instead of spinning
                log.warning("metrics endpoint %s: accept failed: %s; trying again in %gs", self.address,
                            exc.strerror or exc, ACCEPT_PAUSE)
                selector.unregister(self._listener)
                self._paused_until = time.monotonic() + ACCEPT_PAUSE
                return
            if len(self._clients) >= MAX_CLIENTS:
                self._drop(selector, min(self._clients.values(), key=lambda c: c.deadline))
            sock.setblocking(False)
            client = _Client(sock, time.monotonic() + READ_TIMEOUT)
            self._clients[sock] = client
            selector.register(sock, selectors.EVENT_READ)
            self._step(selector, client)  # a scraper's request is usually there already

    def _step(self, selector: selectors.BaseSelector, client: _Client) -> None:
        try:
            done = self._read(selector, client) if client.reply is None else self._write(client)
        except OSError as exc:
            log.debug("metrics endpoint: a client went away: %s", exc)
            done = True
        except Exception:  # a bug here must not end the endpoint
            log.exception("metrics endpoint %s: unexpected error while answering", self.address)
            done = True
        if done:
            self._drop(selector, client)

    def _read(self, selector: selectors.BaseSelector, client: _Client) -> bool:
        """Take what the client sent; True when it is done with (gone, or a head too big)."""
        try:
            chunk = client.sock.recv(HEAD_MAX)
        except BlockingIOError:
            return False
        client.head += chunk
        if b"\r\n\r\n" in client.head or b"\n\n" in client.head:
            return self._answer(selector, client)
        if len(client.head) > HEAD_MAX:
            return True  # dropped unanswered
        if not chunk:  # it closed its side: answer what came, if anything did
            return self._answer(selector, client) if client.head else True
        return False

    def _answer(self, selector: selectors.BaseSelector, client: _Client) -> bool:
        client.reply = self._reply(client.head)
        client.deadline = time.monotonic() + WRITE_TIMEOUT
        selector.modify(client.sock, selectors.EVENT_WRITE)
        return self._write(client)

    def _reply(self, head: bytes) -> bytes:
        method, target = _request_line(head)
        if method not in (b"GET", b"HEAD"):
            return _answer("405 Method Not Allowed", b"only GET /metrics\n")
        if target.split(b"?", 1)[0] != b"/metrics":
            return _answer("404 Not Found", b"clawsvc serves its metrics at /metrics\n")
        return _answer("200 OK", self._render().encode("utf-8"), CONTENT_TYPE, head=method == b"HEAD")

    @staticmethod
    def _write(client: _Client) -> bool:
        """Send what the socket takes now; True once all of the answer is out."""
        assert client.reply is not None
        try:
            sent = client.sock.send(client.reply)
        except BlockingIOError:
            return False
        client.reply = client.reply[sent:]
        return not client.reply

    def _drop(self, selector: selectors.BaseSelector, client: _Client) -> None:
        self._clients.pop(client.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(client.sock)
        client.sock.close()


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
