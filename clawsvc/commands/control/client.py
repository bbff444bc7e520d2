"""What every command that asks the running service needs: its control socket (found without loading the whole
config), one request to it, and the exit code of the answer."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc import exitcodes
from clawsvc.config import (
    SYSTEM_CONTROL_SOCKET,
    Config,
    ConfigError,
    ConnectionConfig,
    default_config_path,
    default_control_socket,
    instances,
    load_config,
)
from clawsvc.config.peek import Peeked, peek
from clawsvc.control.client import ClientRefusal, RequestTooLarge, request
from clawsvc.control.wire import (
    ControlError,
    ServiceNotRunning,
)

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


CLIENT_KEYS = ("control.socket", "connection.request_timeout")


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
    return Target(client_socket(socket or default_control_socket()),
                  found.get("connection.request_timeout", ConnectionConfig.request_timeout))


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


