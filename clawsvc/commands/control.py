"""`clawsvc status`, `clawsvc rpc`, `clawsvc restart-gateway`: ask the running service over its control socket."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from clawsvc import exitcodes
from clawsvc.config import SYSTEM_CONTROL_SOCKET, Config, ConfigError, default_control_socket, load_config
from clawsvc.control.client import ClientRefusal, RequestTooLarge, request
from clawsvc.control.wire import MAX_DEPTH, MAX_REQUEST, MAX_RPC_TIMEOUT, ControlError, ServiceNotRunning, too_deep
from clawsvc.service.status import human_duration

STATUS_TIMEOUT = 10.0
MARGIN = 5.0  # the service's own timeout fires first, so its error (not ours) reaches the user


def _fail(text: str) -> None:
    print(f"clawsvc: {text}", file=sys.stderr)


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        _fail(str(exc))
        return None


def client_socket(config: Config) -> Path:
    """The configured socket; for a user with no session of its own (`sudo -u clawsvc clawsvc status`) whose
    default points nowhere, the system service's socket."""
    path = config.control.socket
    if path == default_control_socket() and not os.path.exists(path) and SYSTEM_CONTROL_SOCKET.parent.is_dir():
        return SYSTEM_CONTROL_SOCKET
    return path


def _ask(config: Config, message: dict[str, Any], timeout: float,
         refused_exit: int = exitcodes.FAIL) -> tuple[int, Any]:
    """(exit code, result); on failure the reason is already on stderr. Exit codes: 2 a request too large to
    send (usage), 1 this client refused the server or its reply, else `refused_exit` for the service's refusals."""
    try:
        return exitcodes.OK, request(client_socket(config), message, timeout)
    except ServiceNotRunning as exc:
        _fail(f"{exc}; is the service started? (systemctl status clawsvc)")
        return exitcodes.NOT_RUNNING, None
    except ControlError as exc:
        _fail(f"{exc.code}: {exc.message}")
        if exc.details is not None:
            print(json.dumps(exc.details, indent=2, ensure_ascii=False, default=str), file=sys.stderr)
        if isinstance(exc, RequestTooLarge):
            return exitcodes.USAGE, None
        return exitcodes.FAIL if isinstance(exc, ClientRefusal) else refused_exit, None


def _bullet(running: bool) -> str:
    bullet = "●" if running else "○"
    try:
        bullet.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "*"
    return bullet


def _state_line(status: dict[str, Any], now: float) -> str:
    state = str(status.get("state") or "unknown")
    uptime, since = status.get("uptime"), status.get("connectedAt")
    if state == "running" and isinstance(since, int | float):
        stamp = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(since))
        return f"{state} since {stamp}; {human_duration(now - since)} ago"
    if isinstance(uptime, int | float):
        return f"{state} (gateway up {human_duration(uptime)})"
    if state == "reconnecting" and status.get("reconnectAttempts"):
        return f"{state} (attempt {status['reconnectAttempts']})"
    return state


def _gateway_line(status: dict[str, Any]) -> str:
    parts = [f"pid {status['pid']}" if status.get("pid") else "no process",
             f"port {status.get('port', '?')}"]
    if status.get("gatewayVersion"):
        parts.append(f"openclaw {status['gatewayVersion']}")
    if status.get("pid") or status.get("state") == "running":
        parts.append("started by clawsvc" if status.get("owned") else "adopted (clawsvc will not stop it)")
    return ", ".join(parts)


def render_status(status: dict[str, Any], socket_path: object, now: float | None = None) -> str:
    """The human view of a status snapshot, in the spirit of `systemctl status`."""
    now = time.time() if now is None else now
    state = str(status.get("state") or "unknown")
    rows = [("State", _state_line(status, now)), ("Gateway", _gateway_line(status)),
            ("Restarts", f"{status.get('restarts', 0)}, reconnect attempts: {status.get('reconnectAttempts', 0)}")]
    if status.get("cause") and state != "running":
        rows.append(("Cause", str(status["cause"])))
    if status.get("lastExit"):
        rows.append(("Last exit", str(status["lastExit"])))
    if status.get("error"):
        rows.append(("Error", str(status["error"])))
    service = f"pid {status.get('servicePid', '?')}"
    if isinstance(status.get("serviceUptime"), int | float):
        service += f", up {human_duration(status['serviceUptime'])}"
    rows += [("Service", service), ("Config", str(status.get("config") or "built-in defaults")),
             ("Control", str(socket_path))]
    lines = [f"{_bullet(state == 'running')} clawsvc - OpenClaw gateway service: {state}"]
    lines += [f"{label:>10}: {value}" for label, value in rows]
    return "\n".join(lines)


def status_main(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return exitcodes.CONFIG
    code, status = _ask(config, {"cmd": "status"}, STATUS_TIMEOUT, refused_exit=exitcodes.NOT_RUNNING)
    if code != exitcodes.OK:
        return code
    if not isinstance(status, dict):
        _fail(f"unexpected status reply: {status!r}")
        return exitcodes.FAIL
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
    else:
        print(render_status(status, client_socket(config)))
    return exitcodes.OK if status.get("state") == "running" else exitcodes.NOT_RUNNING


class _BadParams(Exception):
    """The rpc params argument cannot be used; the message names where they came from."""


def _params_text(spec: str) -> tuple[str, bytes]:
    """(where, raw bytes) of PARAMS_JSON, @FILE or - (stdin); at most MAX_REQUEST bytes are read."""
    if spec == "-":
        where, raw = "params on stdin", _read_capped("params on stdin", None)
    elif spec.startswith("@"):
        if not spec[1:]:
            raise _BadParams("@FILE needs a file name, e.g. @params.json")
        where = f"params file {spec[1:]}"
        raw = _read_capped(where, spec[1:])
    else:
        where, raw = "PARAMS_JSON", spec.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_REQUEST:
        raise _BadParams(f"{where} is larger than {MAX_REQUEST} bytes, the most clawsvc takes in one request")
    return where, raw


def _read_capped(where: str, path: str | None) -> bytes:
    """Up to MAX_REQUEST + 1 bytes of the file, or of stdin when `path` is None (a FIFO or /dev/zero ends too)."""
    try:
        if path is None:
            return sys.stdin.buffer.read(MAX_REQUEST + 1)
        with open(path, "rb") as file:
            return file.read(MAX_REQUEST + 1)
    except (OSError, AttributeError) as exc:  # AttributeError: no stdin at all
        raise _BadParams(f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None


def read_params(spec: str | None) -> Any:
    """The params of `clawsvc rpc`, parsed; _BadParams with one line if they are unusable."""
    if spec is None:
        return None
    where, raw = _params_text(spec)
    if too_deep(raw):
        raise _BadParams(f"{where} nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _BadParams(f"{where} is not valid JSON: {exc}") from None


def rpc_main(args: argparse.Namespace) -> int:
    try:
        params = read_params(args.params)
    except _BadParams as exc:
        _fail(str(exc))
        return exitcodes.USAGE
    if args.timeout is not None and not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_RPC_TIMEOUT):
        _fail(f"--timeout must be a positive number of seconds up to {MAX_RPC_TIMEOUT:g}")
        return exitcodes.USAGE
    config = _load(args)
    if config is None:
        return exitcodes.CONFIG
    message = {"cmd": "rpc", "method": args.method, "params": params, "timeout": args.timeout}
    code, result = _ask(config, message, (args.timeout or config.connection.request_timeout) + MARGIN)
    if code == exitcodes.OK:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return code


def restart_main(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return exitcodes.CONFIG
    wait = config.gateway.stop_timeout + config.gateway.start_timeout + MARGIN
    code, result = _ask(config, {"cmd": "restart-gateway"}, wait)
    if code == exitcodes.OK:
        message = result.get("message") if isinstance(result, dict) else None
        print(message or "gateway restart requested; follow it with: clawsvc status")
    return code
