"""Protocol 4 as the gateway double speaks it: connect validation and the hello-ok payload (pure, no I/O).

Messages, error codes and close codes are those the real openclaw@2026.9.6 sends (see shared/openclaw.md).
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

VERSION = os.environ.get("DOUBLE_VERSION", "double-1")  # the server.version it reports (tests of upgrade)
CLIENT_IDS = frozenset({"gateway-client", "cli", "test", "openclaw-probe", "webchat", "openclaw-control-ui"})
CLIENT_MODES = frozenset({"webchat", "cli", "ui", "backend", "node", "worker", "probe", "test"})
READ_SCOPES = frozenset({"operator.read", "operator.write", "operator.admin"})
METHODS = ("health", "status", "double.garbage", "double.silence", "double.freeze", "double.flood",
           "double.seqgap", "double.huge", "double.legacy", "double.sleep", "double.event", "double.close",
           "double.exit", "double.hang", "double.log")
EVENTS = ("connect.challenge", "tick", "shutdown", "health", "flood")


class Rejection(NamedTuple):
    """A failed handshake: the error of the `res` frame, then the close code and reason."""

    error: dict[str, Any]
    close_code: int
    close_reason: str
    log_reason: str


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **extra}


def parse_request(raw: str | bytes) -> dict[str, Any] | None:
    """The frame as a dict when it is a well-formed `req`, else None; ValueError when it is not JSON at all."""
    frame = json.loads(raw)
    if not isinstance(frame, dict) or frame.get("type") != "req":
        return None
    if not isinstance(frame.get("id"), str) or not isinstance(frame.get("method"), str):
        return None
    return frame


def _invalid(message: str, close_code: int, log_reason: str, **extra: Any) -> Rejection:
    return Rejection(error("INVALID_REQUEST", message, **extra), close_code, message, log_reason)


def _params_problem(params: Any) -> str | None:
    client = params.get("client") if isinstance(params, dict) else None
    if not isinstance(client, dict) or client.get("id") not in CLIENT_IDS:
        return "at /client/id: must be equal to one of the allowed values"
    if client.get("mode") not in CLIENT_MODES:
        return "at /client/mode: must be equal to one of the allowed values"
    for key in ("minProtocol", "maxProtocol"):
        if isinstance(params.get(key), bool) or not isinstance(params.get(key), int):
            return f"must have required property '{key}'"
    return None


def check_connect(method: str, params: Any, *, token: str, protocol: int, starting: bool) -> Rejection | None:
    """Why the first request of a connection is refused, in the order the real gateway checks; None if accepted."""
    if method != "connect":
        return _invalid("invalid handshake: first request must be connect", 1008, "invalid-handshake")
    if starting:
        err = error("UNAVAILABLE", "gateway starting; retry shortly", retryable=True, retryAfterMs=500,
                    details={"reason": "startup-sidecars"})
        return Rejection(err, 1013, "gateway starting", "startup-unavailable")
    problem = _params_problem(params)
    if problem is not None:
        return _invalid(f"invalid connect params: {problem}", 1008, "invalid-connect-params")
    lo, hi = params["minProtocol"], params["maxProtocol"]
    if not lo <= protocol <= hi:
        details = {"code": "PROTOCOL_MISMATCH", "clientMinProtocol": lo, "clientMaxProtocol": hi,
                   "expectedProtocol": protocol, "minimumProbeProtocol": protocol - 1}
        return _invalid("protocol mismatch", 1002, f"protocol-mismatch min={lo} max={hi}", details=details)
    auth = params.get("auth")
    given = auth.get("token") if isinstance(auth, dict) else None
    if given != token:
        word = "missing" if not given else "mismatch"
        details = {"code": f"AUTH_TOKEN_{word.upper()}", "authReason": f"token_{word}",
                   "canRetryWithDeviceToken": False, "recommendedNextStep": "update_auth_credentials"}
        return _invalid(f"unauthorized: gateway token {word} (provide gateway auth token)", 1008,
                        f"unauthorized reason=token_{word}", details=details)
    return None


def granted_scopes(params: dict[str, Any], has_origin: bool) -> list[str]:
    """A browser-style connect (Origin header) gets no scopes, as with the real gateway."""
    if has_origin:
        return []
    return [scope for scope in params.get("scopes") or [] if isinstance(scope, str)]


def hello_ok(*, protocol: int, boot_id: str, conn_id: str, uptime_ms: int, role: str, scopes: list[str],
             max_payload: int, tick_ms: int) -> dict[str, Any]:
    return {
        "type": "hello-ok",
        "protocol": protocol,
        "server": {"version": VERSION, "buildId": f"{VERSION}-test", "bootId": boot_id, "connId": conn_id},
        "features": {"methods": list(METHODS), "events": list(EVENTS), "capabilities": []},
        "snapshot": {"presence": [], "health": {}, "stateVersion": {"presence": 0, "health": 0},
                     "uptimeMs": uptime_ms},
        "auth": {"role": role, "scopes": scopes},
        "policy": {"maxPayload": max_payload, "maxBufferedBytes": 2 * max_payload, "tickIntervalMs": tick_ms},
    }
