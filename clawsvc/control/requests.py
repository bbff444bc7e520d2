"""What a control request means: one request line, already read from a checked peer, turned into a call on the
service (status, metrics, rpc, restart-gateway, events, dashboard) and its reply. No sockets here; server.py does
the serving (stream.py the events that follow an `events` request with follow)."""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

from clawsvc.control.wire import (
    COMMANDS,
    MAX_DEPTH,
    MAX_NAME,
    MAX_NAMES,
    RESTART_MODES,
    RESTART_WHYS,
    ControlError,
    Peer,
    error,
    rpc_timeout,
    too_deep,
)
from clawsvc.logs import redact
from clawsvc.text import shown

log = logging.getLogger("clawsvc.control.server")  # these lines are about the server's clients


class Feed(Protocol):
    """One events subscriber (clawsvc.service.eventhub.Feed): fileno() is readable when take() has news."""
    def fileno(self) -> int: ...
    def take(self) -> list[bytes] | None: ...  # each event's JSON, encoded; [] nothing yet; None: ended
    def sending(self, now: float) -> None: ...
    def sent(self) -> None: ...
    def stuck(self, now: float) -> dict[str, Any] | None: ...  # the last line for a stuck subscriber
    def end(self) -> None: ...
    def close(self) -> None: ...


class ControlHandler(Protocol):
    def status(self) -> dict[str, Any]: ...
    def metrics(self) -> str: ...
    def rpc(self, method: str, params: Any, timeout: float | None) -> Any: ...
    def restart_gateway(self, mode: str, why: str = "requested") -> dict[str, Any]: ...
    def event_history(self, names: frozenset[str] | None) -> Any: ...  # a JSON array (jsontext.RawJSON)
    def subscribe(self, names: frozenset[str] | None) -> Feed: ...
    def dashboard(self) -> dict[str, Any]: ...  # a one-time Control UI login link (clawsvc.gateway.dashboard)


def answer(handler: ControlHandler, raw: bytes, peer: Peer | None) -> dict[str, Any]:
    """The reply to one request line: {"ok": true, "result": ...} or an error object."""
    if too_deep(raw):
        return error("BAD_REQUEST", f"request nested deeper than {MAX_DEPTH} levels")
    try:
        request = json.loads(raw)
    except ValueError as exc:
        return error("BAD_REQUEST", f"not valid JSON: {exc}")
    except RecursionError:
        return error("BAD_REQUEST", f"request nested deeper than {MAX_DEPTH} levels")
    if not isinstance(request, dict):
        return error("BAD_REQUEST", 'a request is a JSON object like {"cmd": "status"}')
    cmd = str(request.get("cmd"))[:40]
    log.debug("control: %s%s from %s", cmd, f" {str(request.get('method'))[:80]}" if cmd == "rpc" else "",
              f"uid {peer.uid} pid {peer.pid}" if peer else "a local client")
    try:
        result = _run(handler, request)
    except Exception as exc:
        return _failure(cmd, exc)
    if cmd == "dashboard":  # who was handed a login: for the admin reading the journal, never the link itself
        log.info("control: gave a one-time Control UI login link to %s",
                 f"uid {peer.uid} (pid {peer.pid})" if peer else "a local client")
    return {"ok": True, "result": result}


def _run(handler: ControlHandler, request: dict[str, Any]) -> Any:
    cmd = request.get("cmd")
    if cmd == "status":
        return handler.status()
    if cmd == "metrics":
        return handler.metrics()
    if cmd == "restart-gateway":
        mode = request.get("mode", "safe")
        if mode not in RESTART_MODES:
            raise ControlError("BAD_REQUEST", f"restart-gateway mode must be one of {', '.join(RESTART_MODES)}, "
                                              f"got {shown(mode)}")
        why = request.get("why", "requested")
        if why not in RESTART_WHYS:
            raise ControlError("BAD_REQUEST", f"restart-gateway why must be one of {', '.join(RESTART_WHYS)}, "
                                              f"got {shown(why)}")
        return handler.restart_gateway(mode, why)
    if cmd == "dashboard":
        return handler.dashboard()
    if cmd == "events":
        names = event_names(request.get("names"))
        if request.get("follow") is True:  # a short one was taken by stream.py before it got here
            raise ControlError("BAD_REQUEST", "an events request with follow must be a short plain JSON line")
        return handler.event_history(names)
    if cmd != "rpc":
        raise ControlError("BAD_REQUEST", f"unknown command {str(cmd)[:40]!r}; known: {', '.join(COMMANDS)}")
    method = request.get("method")
    if not isinstance(method, str) or not method:
        raise ControlError("BAD_REQUEST", "rpc needs a method name")
    return handler.rpc(method, request.get("params"), rpc_timeout(request.get("timeout")))


def _failure(cmd: str, exc: Exception) -> dict[str, Any]:
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(code, str) and isinstance(message, str):  # GatewayError, ControlError
        return error(code, message, getattr(exc, "details", None))
    if isinstance(exc, TimeoutError):
        return error("TIMEOUT", redact(str(exc)) or "timed out")
    log.exception("control: %s failed with an unexpected error", cmd)
    return error("INTERNAL", redact(f"{exc.__class__.__name__}: {exc}"))


def event_names(value: Any) -> frozenset[str] | None:
    """An events request's "names": null or a list of event names; None (or []) means all but tick."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_NAMES or not all(
            isinstance(name, str) and 0 < len(name) <= MAX_NAME for name in value):
        raise ControlError("BAD_REQUEST", f"events names must be a list of at most {MAX_NAMES} names of 1 to "
                                          f"{MAX_NAME} characters, got {shown(value)}")
    return frozenset(value) or None


