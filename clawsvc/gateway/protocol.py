"""The gateway's WebSocket protocol (v3..v4) as plain data: frames, connect params, hello-ok, errors.

Pure: no sockets, no threads. connection.py does the I/O and calls into this module; the handshake's own
messages (connect params, hello-ok) are in hello.py.

Frames (text, JSON, closed objects):
  request  {"type":"req","id","method","params"?}
  response {"type":"res","id","ok":true,"payload"} | {"type":"res","id","ok":false,"error":{...}}
  event    {"type":"event","event","payload"?,"seq"?}
Legacy JSON-RPC 2.0 frames, as the original manager accepted them:
  {"jsonrpc":"2.0","id","result"|"error"}  -> a response for that id (error codes mapped by name)
  {"jsonrpc":"2.0","method","params"}       -> an event named after the method, payload = params
  (so "channel.status" -> event "channel.status", "chat" -> "chat", "error" -> "error"; seq is None)
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from clawsvc.logs import redact

PROTOCOL_MIN = 3
PROTOCOL_MAX = 4
CHALLENGE_EVENT = "connect.challenge"

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_AUTH_CHANGED = 4001

_JSONRPC_CODES = {-32700: "PARSE_ERROR", -32600: "INVALID_REQUEST", -32601: "METHOD_NOT_FOUND",
                  -32602: "INVALID_PARAMS", -32603: "INTERNAL_ERROR"}
_AUTH_DETAIL_CODES = frozenset({"PAIRING_REQUIRED", "DEVICE_IDENTITY_REQUIRED", "CONTROL_UI_DEVICE_IDENTITY_REQUIRED",
                                "CONTROL_UI_ORIGIN_NOT_ALLOWED", "CLIENT_VERSION_MISMATCH"})


# ---------------------------------------------------------------- errors

class GatewayError(Exception):
    """An error from or about the gateway; str() is one line, secrets masked."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def detail_code(self) -> str | None:
        value = (self.details or {}).get("code")
        return value if isinstance(value, str) else None

    def __str__(self) -> str:
        extra = f" [{self.detail_code}]" if self.detail_code and self.detail_code != self.code else ""
        return redact(" ".join(f"{self.code}: {self.message}{extra}".split()))


def describe_error(error: BaseException) -> str:
    """One line for a log or a status: a GatewayError as it prints itself, anything else as "Type: text"."""
    if isinstance(error, GatewayError):
        return str(error)
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RetryableError(GatewayError):
    """The gateway cannot serve yet (starting, restarting); try again after retry_after seconds if given."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(code, message, details)
        self.retry_after = retry_after


class AuthError(GatewayError):
    """The gateway refused our credentials; retrying with the same token cannot succeed."""


class ProtocolMismatchError(GatewayError):
    """The gateway and clawsvc share no protocol version; the message names both."""


class UntrustedPeerError(GatewayError):
    """The process at the other end of the connection is not one clawsvc may send the gateway token to."""


class TransportError(GatewayError):
    """The link itself failed: refused, reset, timed out, closed unexpectedly."""


class RpcError(GatewayError):
    """The gateway answered a request with an error (unknown method, missing scope, bad params...)."""


class ConnectionLost(TransportError):
    """A pending request failed because the link went down before its answer came."""


class RpcTimeout(TransportError):
    """No answer to a request within its timeout (the link may still be up)."""


class MalformedFrame(ValueError):
    """A frame this client cannot use; the reader counts it and carries on."""


# ---------------------------------------------------------------- values

@dataclass(frozen=True)
class GatewayEvent:
    name: str
    payload: Any
    seq: int | None


@dataclass(frozen=True)
class LinkDown:
    """Why a connection ended: close code (None when there was no close frame), reason, who closed it."""

    code: int | None
    reason: str
    local: bool

    def __str__(self) -> str:
        who = "closed by clawsvc" if self.local else "lost"
        code = f" (code {self.code})" if self.code is not None else ""
        return f"{who}{code}: {self.reason}" if self.reason else f"{who}{code}"


@dataclass(frozen=True)
class Response:
    id: str
    payload: Any
    error: GatewayError | None


Frame = Response | GatewayEvent


# ---------------------------------------------------------------- outgoing

def encode_request(request_id: str, method: str, params: Any = None) -> str:
    """The request as JSON text; params are left out when None (the gateway rejects null params)."""
    frame: dict[str, Any] = {"type": "req", "id": request_id, "method": method}
    if params is not None:
        frame["params"] = params
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------- incoming

def parse_frame(data: str | bytes) -> Frame:
    """One incoming frame; raises MalformedFrame with a short reason for anything unusable."""
    if isinstance(data, bytes):
        raise MalformedFrame(f"binary frame ({len(data)} bytes)")
    try:
        frame = json.loads(data)
    except ValueError:
        raise MalformedFrame(f"not JSON: {data[:60]!r}") from None
    except RecursionError:
        raise MalformedFrame("JSON nested too deeply") from None
    if not isinstance(frame, dict):
        raise MalformedFrame(f"not a JSON object: {type(frame).__name__}")
    if frame.get("jsonrpc") == "2.0":
        return _parse_jsonrpc(frame)
    kind = frame.get("type")
    if kind == "res":
        return _parse_response(frame)
    if kind == "event":
        name = frame.get("event")
        if not isinstance(name, str) or not name:
            raise MalformedFrame("event without a name")
        seq = frame.get("seq")
        return GatewayEvent(name, frame.get("payload"), seq if is_int(seq) else None)
    raise MalformedFrame(f"unknown frame type {str(kind)[:40]!r}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _frame_id(frame: dict[str, Any]) -> str:
    value = frame.get("id")
    if isinstance(value, str) and value:
        return value
    if is_int(value):
        return str(value)
    raise MalformedFrame("response without an id")


def _parse_response(frame: dict[str, Any]) -> Response:
    request_id = _frame_id(frame)
    if frame.get("ok") is True:
        return Response(request_id, frame.get("payload"), None)
    error = frame.get("error")
    if frame.get("ok") is not False or not isinstance(error, dict):
        raise MalformedFrame(f"response {request_id[:40]!r} has neither ok:true nor an error object")
    return Response(request_id, None, error_from_reply(error))


def _parse_jsonrpc(frame: dict[str, Any]) -> Frame:
    method = frame.get("method")
    if "id" not in frame or frame.get("id") is None:
        if not isinstance(method, str) or not method:
            raise MalformedFrame("JSON-RPC notification without a method")
        return GatewayEvent(method, frame.get("params"), None)
    if method is not None:
        raise MalformedFrame(f"JSON-RPC request from the gateway ({str(method)[:40]!r}) is not supported")
    request_id = _frame_id(frame)
    if "result" in frame:
        return Response(request_id, frame["result"], None)
    error = frame.get("error")
    if not isinstance(error, dict):
        raise MalformedFrame(f"JSON-RPC response {request_id[:40]!r} has neither result nor error")
    code = error.get("code")
    name = code if isinstance(code, str) else _JSONRPC_CODES.get(code, f"JSONRPC_{code}")
    data = error.get("data")
    details = data if isinstance(data, dict) else ({"data": data} if data is not None else None)
    return Response(request_id, None, RpcError(name, str(error.get("message") or "error"), details))


def error_from_reply(error: dict[str, Any]) -> GatewayError:
    """Classify a response's error object: protocol, retryable, auth, else a plain RpcError."""
    code = str(error.get("code") or "ERROR")
    message = str(error.get("message") or "gateway request failed")
    details = error.get("details") if isinstance(error.get("details"), dict) else None
    detail_code = (details or {}).get("code")
    if "PROTOCOL_MISMATCH" in (code, detail_code):
        server = (details or {}).get("expectedProtocol")
        return ProtocolMismatchError(code, f"{message}: {versions(server)}", details)
    if error.get("retryable") is True or code == "UNAVAILABLE":
        after = error.get("retryAfterMs")
        retry_after = after / 1000.0 if is_number(after) and after >= 0 else None
        return RetryableError(code, message, details, retry_after)
    if _is_auth_code(code) or _is_auth_code(detail_code):
        return AuthError(code, message, details)
    return RpcError(code, message, details)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_auth_code(code: Any) -> bool:
    return isinstance(code, str) and (code.startswith("AUTH_") or code in _AUTH_DETAIL_CODES
                                      or code in ("UNAUTHORIZED", "UNAUTHENTICATED"))


def versions(server: Any) -> str:
    theirs = f"protocol {server}" if server is not None else "an unknown protocol version"
    return f"gateway speaks {theirs}, clawsvc speaks {PROTOCOL_MIN}..{PROTOCOL_MAX}"


def parse_close(data: bytes) -> tuple[int | None, str]:
    """(code, reason) from a close frame's payload; (None, "") when it carries no code."""
    if len(data) < 2:
        return None, ""
    return struct.unpack("!H", data[:2])[0], data[2:].decode("utf-8", "replace")


def error_from_close(code: int | None, reason: str) -> GatewayError:
    """The error for a close that came before hello-ok (or instead of an answer)."""
    said = f"gateway closed the connection ({code}{': ' + reason if reason else ''})"
    if code == CLOSE_TRY_AGAIN:
        return RetryableError("UNAVAILABLE", f"{said}; it is starting, retry shortly")
    if code == CLOSE_RESTART:
        return RetryableError("RESTARTING", f"{said}; it is restarting")
    if code in (CLOSE_POLICY, CLOSE_AUTH_CHANGED):
        return AuthError("AUTH_REJECTED", f"{said}; check the gateway token")
    if code == CLOSE_PROTOCOL_ERROR:
        return ProtocolMismatchError("PROTOCOL_MISMATCH", f"{said}; {versions(None)}")
    return TransportError("CLOSED", said)
