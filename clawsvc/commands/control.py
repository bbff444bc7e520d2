"""`clawsvc status`, `clawsvc rpc`, `clawsvc restart-gateway`: ask the running service over its control socket."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc import exitcodes, trust
from clawsvc.config import (
    SYSTEM_CONTROL_SOCKET,
    Config,
    ConfigError,
    ConnectionConfig,
    GatewayConfig,
    default_config_path,
    default_control_socket,
    instances,
    load_config,
)
from clawsvc.config.peek import Peeked, peek
from clawsvc.control.client import ClientRefusal, RequestTooLarge, request
from clawsvc.control.wire import (
    MAX_DEPTH,
    MAX_REQUEST,
    TIMEOUT_RULE,
    ControlError,
    ServiceNotRunning,
    rpc_timeout,
    too_deep,
)
from clawsvc.service.status import REPLIED, BadSnapshot, Snapshot, State, status_block

STATUS_TIMEOUT = 10.0
MARGIN = 5.0  # the service's own timeout fires first, so its error (not ours) reaches the user


def fail(text: str) -> None:
    print(f"clawsvc: {text}", file=sys.stderr)


def load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        fail(str(exc))
        return None


@dataclass(frozen=True)
class Target:
    """What a client of the running service needs of its config: where it listens, how long it may take."""

    socket: Path
    request_timeout: float  # connection.request_timeout: the service answers an rpc within it
    restart_wait: float  # gateway.stop_timeout + gateway.start_timeout: a restart through it takes that long


CLIENT_KEYS = ("control.socket", "connection.request_timeout", "gateway.stop_timeout", "gateway.start_timeout")


def target(args: argparse.Namespace) -> Target | None:
    """The running service's socket and timeouts from its config file, without loading the whole config
    (config.peek): after an edit with a typo, a failed `systemctl reload` keeps the service running, and it must
    still be found. A setting that cannot be read is taken at its default; the socket says so on stderr. None
    (exit 78, said already) only for a config file named by -c, -i or $CLAWSVC_CONFIG that does not exist."""
    path = Path(args.config) if args.config is not None else default_config_path()
    try:
        peeked = peek(path, CLIENT_KEYS)
    except FileNotFoundError:
        if args.config is not None or os.environ.get("CLAWSVC_CONFIG"):
            fail(f"{path}: config file not found")
            return None
        peeked = Peeked()
    except ConfigError as exc:
        peeked = Peeked(problems={"control.socket": str(exc)})
    found = peeked.values
    socket = found.get("control.socket")
    if socket is None and "control.socket" in peeked.problems:
        instance = getattr(args, "instance", None)
        socket = instances.control_socket(instance) if instance else default_control_socket()
        fail(f"{peeked.problems['control.socket']}; trying the default control socket {socket}")
    gateway, connection = GatewayConfig, ConnectionConfig
    return Target(client_socket(socket or default_control_socket()),
                  found.get("connection.request_timeout", connection.request_timeout),
                  found.get("gateway.stop_timeout", gateway.stop_timeout)
                  + found.get("gateway.start_timeout", gateway.start_timeout))


def client_socket(path: Path) -> Path:
    """The configured socket; for a user with no session of its own (`sudo -u clawsvc clawsvc status`) whose
    default points nowhere, the system service's socket."""
    if path == default_control_socket() and not os.path.exists(path) and SYSTEM_CONTROL_SOCKET.parent.is_dir():
        return SYSTEM_CONTROL_SOCKET
    return path


def ask(socket: Path, message: dict[str, Any], timeout: float,
        refused_exit: int = exitcodes.FAIL) -> tuple[int, Any]:
    """(exit code, result); on failure the reason is already on stderr. Exit codes: 2 a request too large to
    send (usage), 1 this client refused the server or its reply, else `refused_exit` for the service's refusals."""
    try:
        return exitcodes.OK, request(socket, message, timeout)
    except ServiceNotRunning as exc:
        fail(f"{exc}; is the service started? (systemctl status clawsvc)")
        return exitcodes.NOT_RUNNING, None
    except ControlError as exc:
        fail(f"{exc.code}: {exc.message}")
        if exc.details is not None:
            print(json.dumps(exc.details, indent=2, ensure_ascii=False, default=str), file=sys.stderr)
        if isinstance(exc, RequestTooLarge):
            return exitcodes.USAGE, None
        return exitcodes.FAIL if isinstance(exc, ClientRefusal) else refused_exit, None


def status_main(args: argparse.Namespace) -> int:
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    code, reply = ask(found.socket, {"cmd": "status"}, STATUS_TIMEOUT, refused_exit=exitcodes.NOT_RUNNING)
    if code != exitcodes.OK:
        return code
    try:
        snap = Snapshot.from_dict(reply)
    except BadSnapshot as exc:
        fail(f"clawsvc at {found.socket} sent a status reply this client cannot use: {exc}")
        return exitcodes.FAIL
    if args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    else:
        print(status_block(snap, found.socket, REPLIED, time.time()))
    return exitcodes.OK if snap.state is State.RUNNING else exitcodes.NOT_RUNNING


class _BadParams(Exception):
    """The rpc params argument cannot be used; the message names where they came from."""


def _too_large(where: str) -> _BadParams:
    return _BadParams(f"{where} is larger than {MAX_REQUEST} bytes, the most clawsvc takes in one request")


def _params_text(spec: str) -> tuple[str, bytes]:
    """(where, raw bytes) of PARAMS_JSON, @FILE or - (stdin); at most MAX_REQUEST bytes are read."""
    if spec == "-":
        where, raw = "params on stdin", _read_stdin("params on stdin")
    elif spec.startswith("@"):
        if not spec[1:]:
            raise _BadParams("@FILE needs a file name, e.g. @params.json")
        where = f"params file {spec[1:]}"
        raw = _read_file(where, spec[1:])
    else:
        where, raw = "PARAMS_JSON", spec.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_REQUEST:
        raise _too_large(where)
    return where, raw


def _read_stdin(where: str) -> bytes:
    """Up to MAX_REQUEST + 1 bytes of stdin (a pipe, a FIFO, /dev/zero: the caller chose to wait for it)."""
    try:
        return sys.stdin.buffer.read(MAX_REQUEST + 1)
    except (OSError, AttributeError) as exc:  # AttributeError: no stdin at all
        raise _BadParams(f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None


def _read_file(where: str, path: str) -> bytes:
    """A regular file of at most MAX_REQUEST bytes, opened without blocking: a FIFO or a device is refused at
    once (before it is opened), a file that is too big before it is read."""
    def vet(st: os.stat_result) -> None:
        if st.st_size > MAX_REQUEST:
            raise _too_large(where)

    try:
        return trust.read_regular(path, "params file", cap=MAX_REQUEST, nofollow=False, vet=vet).data
    except trust.TrustError as exc:
        raise _BadParams(str(exc)) from None
    except OSError as exc:
        raise _BadParams(f"cannot read {where}: {exc.strerror or exc}") from None


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
        fail(str(exc))
        return exitcodes.USAGE
    try:
        rpc_timeout(args.timeout)
    except ControlError:
        fail(f"--timeout must be {TIMEOUT_RULE}")
        return exitcodes.USAGE
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    message = {"cmd": "rpc", "method": args.method, "params": params, "timeout": args.timeout}
    code, result = ask(found.socket, message, (args.timeout or found.request_timeout) + MARGIN)
    if code == exitcodes.OK:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return code


RESTARTING = {
    "safe": "the gateway restarts itself (same process) as soon as its active work is done",
    "fresh": "the gateway finishes its active work, then a new one is started",
    "force": "the gateway is stopped now (SIGKILL after 10s) and a new one started; work in flight is cut off",
}


def restart_main(args: argparse.Namespace) -> int:
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    mode = "force" if args.force else "safe"
    code, result = ask(found.socket, {"cmd": "restart-gateway", "mode": mode}, STATUS_TIMEOUT + MARGIN)
    if code == exitcodes.OK:
        done = result.get("mode") if isinstance(result, dict) else None
        print(f"{RESTARTING.get(str(done), 'gateway restart requested')}; follow it with: clawsvc status")
    return code
