"""One WebSocket link to the gateway: handshake, RPC futures for many threads, events, liveness.

Threads: the caller of connect() does the handshake; then one reader thread (clawsvc-ws-reader) receives
every frame, resolves RPC futures by id, delivers events, sends pings and watches the deadlines (tick
silence, pong). There is no timer thread: the reader waits on the socket with select() until the next
deadline. Any thread may call rpc() and close().

Callbacks run on the reader thread: on_event for every event except connect.challenge (hand it to a queue;
while it runs no frame is read and no RPC answer is delivered), on_down exactly once per connection with
the reason the link ended (remote close, socket error, tick silence, pong timeout, or our own close).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import websocket
from websocket import ABNF

from clawsvc.config import Config
from clawsvc.gateway.frames import PONG_TIMEOUT_MAX, ConnectionStats, FrameCheck, Liveness
from clawsvc.gateway.hello import ADMIN_SCOPE, HelloOk, connect_params, parse_hello
from clawsvc.gateway.protocol import (
    CHALLENGE_EVENT,
    ConnectionLost,
    GatewayError,
    GatewayEvent,
    LinkDown,
    Response,
    RpcTimeout,
    TransportError,
    describe_error,
    encode_request,
    error_from_close,
    parse_close,
)
from clawsvc.logs import register_secret
from clawsvc.threads import start_thread

log = logging.getLogger("clawsvc.gateway.connection")
# websocket-client logs every abnormal close at ERROR itself; this module reports each close once, classified.
logging.getLogger("websocket").setLevel(logging.CRITICAL)

SOCKET_TIMEOUT = 10.0     # bounds a blocked send or a half-received frame
CLOSE_REPLY_WAIT = 0.25   # how long close() waits for the gateway to answer our close frame
CLOSE_SEND_TIMEOUT = 0.5  # bounds sending our close frame to a peer that stopped reading
CLOSE_GRACE = 2.0         # how long to wait for the reader thread once its socket is shut down


class GatewayConnection:
    """A client for the gateway's protocol; connect() once per link, reusable after the link is down."""

    def __init__(self, url: str, token: str, *, verify_peer: Callable[[socket.socket], None] | None,
                 handshake_timeout: float = 10.0, request_timeout: float = 30.0,
                 ping_interval: float = 30.0, tick_grace: float = 2.0,
                 on_event: Callable[[GatewayEvent], None] | None = None,
                 on_down: Callable[[LinkDown], None] | None = None) -> None:
        """verify_peer gets the connected socket before the token is sent; it raises (e.g. UntrustedPeerError)
        to keep the token from a listener that is not ours. It has no default: None (send the token to
        whoever answers) must be asked for, and only tools and tests that pick their server themselves do."""
        register_secret(token)
        self.url = url
        self._token = token
        self.handshake_timeout = handshake_timeout
        self.request_timeout = request_timeout
        self.ping_interval = ping_interval
        self.pong_timeout = min(PONG_TIMEOUT_MAX, ping_interval)
        self.tick_grace = tick_grace
        self.on_event = on_event
        self.on_down = on_down
        self.verify_peer = verify_peer
        self.hello: HelloOk | None = None
        self.stats = ConnectionStats()
        self._frames = FrameCheck(url, self.stats)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[str, Future[Any]]] = {}
        self._ws: websocket.WebSocket | None = None
        self._reader: threading.Thread | None = None
        self._down: LinkDown | None = None
        self._closing: tuple[int, str] | None = None

    @classmethod
    def from_config(cls, config: Config, token: str, *, verify_peer: Callable[[socket.socket], None],
                    **callbacks: Any) -> GatewayConnection:
        """The service's connection: always with a peer check (connector.PeerCheck)."""
        conn, health = config.connection, config.health
        return cls(config.url, token, verify_peer=verify_peer, handshake_timeout=conn.handshake_timeout,
                   request_timeout=conn.request_timeout, ping_interval=conn.ping_interval,
                   tick_grace=health.tick_grace, **callbacks)

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._down is None and self._closing is None

    # ------------------------------------------------------------ connect

    def connect(self) -> HelloOk:
        """One attempt: TCP, WebSocket upgrade, verify_peer, challenge, connect, hello-ok. Raises a GatewayError
        subclass."""
        with self._lock:
            if self._ws is not None and self._down is None:
                raise RuntimeError("GatewayConnection.connect() called while connected")
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(CLOSE_GRACE)
        deadline = time.monotonic() + self.handshake_timeout
        # frames are UTF-8-checked once, in FrameCheck.parse; websocket-client's own check is pure Python
        ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True)
        try:
            ws.connect(self.url, timeout=self.handshake_timeout, suppress_origin=True)
        except (OSError, websocket.WebSocketException) as exc:
            ws.shutdown()
            raise TransportError("CONNECT_FAILED", f"cannot connect to {self.url}: {describe_error(exc)}") from None
        try:
            if self.verify_peer is not None:
                self.verify_peer(ws.sock)
            hello = self._handshake(ws, deadline)
        except BaseException:
            ws.shutdown()
            raise
        ws.settimeout(SOCKET_TIMEOUT)
        with self._lock:
            self._ws, self.hello, self._down, self._closing = ws, hello, None, None
            self._frames.last_seq = None
        self._reader = start_thread("ws-reader", self._read_loop, ws, hello)
        self._log_hello(hello)
        return hello

    def _handshake(self, ws: websocket.WebSocket, deadline: float) -> HelloOk:
        frame = self._handshake_frame(ws, deadline, "connect.challenge")
        while not (isinstance(frame, GatewayEvent) and frame.name == CHALLENGE_EVENT):
            frame = self._handshake_frame(ws, deadline, "connect.challenge")
        request_id = f"connect-{next(self._ids)}"
        try:
            ws.send(encode_request(request_id, "connect", connect_params(self._token)))
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError("CONNECT_FAILED",
                                 f"sending connect to {self.url} failed: {describe_error(exc)}") from None
        while True:
            frame = self._handshake_frame(ws, deadline, "connect answer")
            if isinstance(frame, Response) and frame.id == request_id:
                break
        if frame.error is not None:
            raise frame.error
        return parse_hello(frame.payload)

    def _handshake_frame(self, ws: websocket.WebSocket, deadline: float, waiting_for: str) -> Response | GatewayEvent:
        """The next usable frame before hello-ok; a close or a timeout becomes the matching error."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError("HANDSHAKE_TIMEOUT", f"no {waiting_for} from {self.url} within "
                                                          f"{self.handshake_timeout:g}s")
            ws.settimeout(remaining)
            try:
                opcode, data = ws.recv_data(True)
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException) as exc:
                raise TransportError("CLOSED", f"{self.url} dropped the connection while waiting for "
                                               f"{waiting_for}: {describe_error(exc)}") from None
            if opcode == ABNF.OPCODE_CLOSE:
                raise error_from_close(*parse_close(data))
            if opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
                frame = self._frames.parse(opcode, data)
                if frame is not None:
                    return frame

    def _log_hello(self, hello: HelloOk) -> None:
        log.info("connected to gateway %s at %s (protocol %d, conn %s, role %s, scopes %s, tick %gs)",
                 hello.server_version, self.url, hello.protocol, hello.conn_id or "?", hello.role or "?",
                 ",".join(hello.scopes) or "none", hello.tick_interval)
        if not hello.scopes:
            log.warning("gateway at %s granted no scopes although %s was asked for; this usually means the "
                        "request carried an Origin header (a reverse proxy adding one) or the token lacks "
                        "operator scope; status and most RPCs will fail with FORBIDDEN", self.url, ADMIN_SCOPE)

    # ------------------------------------------------------------ rpc

    def rpc(self, method: str, params: Any = None, timeout: float | None = None) -> Any:
        """Send one request and wait for its answer; safe to call from many threads at once."""
        ws, hello = self._ws, self.hello
        if ws is None or hello is None or not self.connected:
            raise ConnectionLost("NOT_CONNECTED", f"cannot call {method}: not connected to the gateway")
        request_id = f"r{next(self._ids)}"
        text = encode_request(request_id, method, params)
        size = len(text.encode("utf-8"))
        if size > hello.max_payload:
            raise GatewayError("PAYLOAD_TOO_LARGE", f"{method} request is {size} bytes, the gateway accepts at "
                                                    f"most {hello.max_payload}; not sent")
        future: Future[Any] = Future()
        with self._lock:
            if self._down is not None or self._closing is not None:
                raise ConnectionLost("CONNECTION_LOST", f"cannot call {method}: connection lost")
            self._pending[request_id] = (method, future)
        try:
            ws.send(text)
        except (OSError, websocket.WebSocketException) as exc:
            ws.abort()
            self._link_down(LinkDown(None, f"sending {method} failed: {describe_error(exc)}", False))
        wait = self.request_timeout if timeout is None else timeout
        try:
            return future.result(wait)
        except TimeoutError:
            with self._lock:
                self._pending.pop(request_id, None)
            if future.done():
                return future.result()
            raise RpcTimeout("TIMEOUT", f"no answer to {method} within {wait:g}s") from None

    # ------------------------------------------------------------ close

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Fail pending calls, send a close frame, give the gateway a moment to answer, then shut the socket.

        Bounded (well under a second) even against a hung or stopped gateway; safe to call twice.
        """
        with self._lock:
            ws, reader = self._ws, self._reader
            if ws is None or self._closing is not None:
                return
            self._closing = (code, reason)
            link_up = self._down is None
        self._link_down(LinkDown(code, reason or "closed by clawsvc", True))
        if link_up:
            try:
                ws.settimeout(CLOSE_SEND_TIMEOUT)
                ws.send_close(code, reason.encode("utf-8"))
            except (OSError, websocket.WebSocketException) as exc:
                log.debug("close frame to %s not sent: %s", self.url, describe_error(exc))
        if reader is not None and reader is not threading.current_thread():
            reader.join(CLOSE_REPLY_WAIT)
            if reader.is_alive():
                self._shutdown_socket(ws)  # no answer to our close frame: wake the reader now
                reader.join(CLOSE_GRACE)

    @staticmethod
    def _shutdown_socket(ws: websocket.WebSocket) -> None:
        """ws.abort() is a no-op once send_close() has cleared `connected`, so shut the raw socket down."""
        sock = ws.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed by the reader
                sock.shutdown(socket.SHUT_RDWR)

    def _link_down(self, down: LinkDown) -> None:
        with self._lock:
            if self._down is not None or self._ws is None:
                return
            self._down = down
            pending, self._pending = self._pending, {}
        for method, future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost("CONNECTION_LOST",
                                                    f"connection lost: {down.reason or down.code} ({method})"))
        log.info("connection to gateway at %s %s; %d pending request(s) failed", self.url, down, len(pending))
        on_down = self.on_down  # the supervisor clears it from its own thread when it drops a link
        if on_down is not None:
            try:
                on_down(down)
            except Exception:
                log.exception("on_down callback failed")

    # ------------------------------------------------------------ reader

    def _read_loop(self, ws: websocket.WebSocket, hello: HelloOk) -> None:
        live = Liveness(time.monotonic(), self.tick_grace * hello.tick_interval, self.ping_interval,
                         self.pong_timeout, hello.tick_interval)
        try:
            while self._down is None:
                now = time.monotonic()
                dead = live.check(now)
                if dead is not None:
                    self._link_down(LinkDown(None, dead, False))
                    return
                if live.ping_due(now) and self._closing is None:
                    ws.ping()
                    self.stats.pings += 1
                if not self._readable(ws, live.next_deadline() - now):
                    continue
                opcode, data = ws.recv_data(True)
                if opcode == ABNF.OPCODE_CLOSE:
                    self._remote_down(*parse_close(data))
                    return
                if opcode == ABNF.OPCODE_PONG:
                    live.pong_due = None
                elif opcode in (ABNF.OPCODE_TEXT, ABNF.OPCODE_BINARY):
                    live.last_frame = time.monotonic()
                    self._dispatch(self._frames.parse(opcode, data))
        except websocket.WebSocketTimeoutException:
            self._remote_down(None, f"gateway stalled mid-frame for {SOCKET_TIMEOUT:g}s")
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            self._remote_down(None, f"connection lost: {describe_error(exc)}")
        except Exception as exc:  # a bug here must still fail pending calls and tell the supervisor
            log.exception("gateway reader for %s failed", self.url)
            self._remote_down(None, f"reader failed: {describe_error(exc)}")
        finally:
            ws.shutdown()

    def _remote_down(self, code: int | None, reason: str) -> None:
        """The reader saw the link end; after our own close frame, close() reports it instead."""
        if self._closing is None:
            self._link_down(LinkDown(code, reason, False))

    @staticmethod
    def _readable(ws: websocket.WebSocket, timeout: float) -> bool:
        sock = ws.sock
        if sock is None:
            raise websocket.WebSocketConnectionClosedException("socket is already closed")
        pending = getattr(sock, "pending", None)
        if pending is not None and pending():
            return True
        readable, _, _ = select.select([sock], [], [], max(0.0, timeout))
        return bool(readable)

    def _dispatch(self, frame: Response | GatewayEvent | None) -> None:
        if isinstance(frame, Response):
            with self._lock:
                entry = self._pending.pop(frame.id, None)
            if entry is None:
                self.stats.unmatched += 1
                log.debug("answer for unknown or timed-out request %s ignored", frame.id[:40])
            elif frame.error is not None:
                entry[1].set_exception(frame.error)
            else:
                entry[1].set_result(frame.payload)
        elif isinstance(frame, GatewayEvent) and frame.name != CHALLENGE_EVENT:
            self._frames.check_seq(frame)
            self.stats.events += 1
            on_event = self.on_event
            if on_event is not None:
                try:
                    on_event(frame)
                except Exception:
                    log.exception("on_event callback failed for event %s", frame.name)
