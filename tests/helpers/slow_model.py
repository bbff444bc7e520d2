"""A slow OpenAI-compatible model on loopback, for real agent turns that take as long as a test needs.

    with SlowModel(reply="the slow answer", delay=25.0) as model:
        ...  # point the gateway's provider `fake` at model.base_url (tests/slowmodel_kit.py writes that config)
        call = model.wait_calls(1, timeout=120)[0]
        model.wait_ended(call, timeout=60)
        assert call.outcome == "finished"

`GET /v1/models` lists the one model; `POST /v1/chat/completions` answers after `delay` seconds, streamed (SSE:
a role chunk at once, the reply in `chunks` pieces spread over the delay, a finish chunk with usage, `[DONE]`)
or in one JSON body. With `hold` set to an Event that is not set yet, a streamed answer keeps its finish chunk
until it is (its text has come by then): a call that lasts until a test has seen what it waits for.
Every call is recorded with its arrival time and how it ended: "finished", "client-gone" (the client closed or
reset the connection before the end: the broken pipe is seen while waiting, not only at the next write) or
"server-closed" (close() ended it). close() unblocks and joins every thread and frees the port.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "slow-model"
MAX_BODY = 16 << 20  # a whole transcript with the gateway's system prompt fits; an absurd length is refused
IDLE_TIMEOUT = 30.0  # a keep-alive connection with no next request is closed after this


@dataclass
class ModelCall:
    """One POST /v1/chat/completions as the server saw it (times are time.monotonic())."""

    index: int
    arrived: float
    stream: bool
    model: str
    last_user_text: str
    outcome: str | None = None  # None while answering, then "finished", "client-gone" or "server-closed"
    ended: float | None = None
    chunks_sent: int = 0
    request: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.outcome == "finished"


class _ClientGone(Exception):
    pass


class _Closing(Exception):
    pass


class SlowModel:
    """The server; `delay`, `chunks`, `reply` and `hold` may be changed between calls (read when a call arrives)."""

    def __init__(self, reply: str = "slow model reply", delay: float = 25.0, chunks: int = 5,
                 model_id: str = MODEL_ID) -> None:
        self.reply, self.delay, self.chunks, self.model_id = reply, delay, max(1, chunks), model_id
        self.hold: threading.Event | None = None
        self._calls: list[ModelCall] = []
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> SlowModel:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = False
        server.block_on_close = True  # server_close() joins every handler thread
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="slow-model-server")
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, end every call in flight ("server-closed"), join all threads, free the port."""
        self._closing.set()
        if self._server is None:
            return
        self._server.shutdown()
        with self._changed:
            connections = list(self._connections)
        for conn in connections:  # unblocks handlers waiting for a next keep-alive request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._server = None

    def __enter__(self) -> SlowModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None, "SlowModel not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- what the tests read -----------------------------------------------------------------------------------

    @property
    def calls(self) -> list[ModelCall]:
        with self._changed:
            return list(self._calls)

    def wait_calls(self, count: int, timeout: float) -> list[ModelCall]:
        """Block until at least `count` calls arrived; AssertionError after `timeout`."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._calls) >= count, timeout):
                raise AssertionError(f"{len(self._calls)} model calls after {timeout:g}s, expected {count}")
            return list(self._calls)

    def wait_ended(self, call: ModelCall, timeout: float) -> ModelCall:
        with self._changed:
            if not self._changed.wait_for(lambda: call.outcome is not None, timeout):
                raise AssertionError(f"model call {call.index} still answering after {timeout:g}s")
        return call

    # -- used by the handler -----------------------------------------------------------------------------------

    def _record(self, call: ModelCall) -> None:
        with self._changed:
            call.index = len(self._calls)
            self._calls.append(call)
            self._changed.notify_all()

    def _end(self, call: ModelCall, outcome: str) -> None:
        with self._changed:
            call.outcome, call.ended = outcome, time.monotonic()
            self._changed.notify_all()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._changed:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)
        if add and self._closing.is_set():  # accepted as close() began, after it shut the others down
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def _handler_for(model: SlowModel) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.model = model
    return Handler


class _Handler(BaseHTTPRequestHandler):
    model: SlowModel
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self.model._track(self.connection, True)

    def finish(self) -> None:
        self.model._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        self._json(200, {"object": "list", "data": [{"id": self.model.model_id, "object": "model",
                                                      "created": 0, "owned_by": "clawsvc-tests"}]})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            self._json(413, {"error": {"message": "request too large", "type": "invalid_request_error"}})
            return
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        model = self.model
        call = ModelCall(0, time.monotonic(), bool(request.get("stream")), str(request.get("model", "")),
                         _last_user_text(request), request=request)
        model._record(call)
        reply, delay, chunks, hold = model.reply, model.delay, model.chunks, model.hold
        try:
            if call.stream:
                self._stream(call, reply, delay, chunks, hold)
            else:
                self._wait(delay)
                self._json(200, _completion(model.model_id, reply))
        except (_ClientGone, _Closing):  # close() also shuts the connections down: its cut is not the client's
            model._end(call, "server-closed" if model._closing.is_set() else "client-gone")
            self.close_connection = True
        else:
            model._end(call, "finished")

    def _stream(self, call: ModelCall, reply: str, delay: float, chunks: int, hold: threading.Event | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        created, ident = int(time.time()), f"chatcmpl-slow-{call.index}"
        self._event(call, _chunk(ident, created, self.model.model_id, {"role": "assistant", "content": ""}))
        pieces = _split(reply, chunks)
        for piece in pieces:
            self._wait(delay / len(pieces))
            self._event(call, _chunk(ident, created, self.model.model_id, {"content": piece}))
        while hold is not None and not hold.is_set():
            self._wait(0.1)
        final = _chunk(ident, created, self.model.model_id, {}, finish="stop")
        final["usage"] = _usage(reply)
        self._event(call, final)
        self._send(b"data: [DONE]\n\n")

    def _event(self, call: ModelCall, payload: dict[str, Any]) -> None:
        self._send(b"data: " + json.dumps(payload).encode() + b"\n\n")
        call.chunks_sent += 1

    def _send(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientGone from exc

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds` while watching the connection: the client closing it or close() ends the wait."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.model._closing.is_set():
                raise _Closing
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.1))
            if readable and _peer_closed(self.connection):
                raise _ClientGone

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._send(data)


def _peer_closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:  # ECONNRESET
        return True


def user_texts(request: dict[str, Any]) -> list[str]:
    """The text of each user message of a chat completion request, in order."""
    messages = request.get("messages")
    texts = []
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.append("".join(str(part.get("text", "")) for part in content if isinstance(part, dict)))
    return texts


def _last_user_text(request: dict[str, Any]) -> str:
    return next(iter(user_texts(request)[-1:]), "")


def _split(text: str, parts: int) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _chunk(ident: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _usage(reply: str) -> dict[str, int]:
    completion = max(1, len(reply.split()))
    return {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion}


def _completion(model: str, reply: str) -> dict[str, Any]:
    return {"id": "chatcmpl-slow", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": _usage(reply)}
