"""States of the supervisor and the messages I/O threads post to its loop (small frozen values, never strings)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clawsvc.connection import GatewayConnection
    from clawsvc.process import ExitInfo
    from clawsvc.protocol import GatewayEvent, HelloOk, LinkDown


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    STOPPING = "stopping"


@dataclass(frozen=True)
class Connected:
    """The connector finished a handshake (hello-ok) with the gateway of generation `gen`."""
    gen: int
    connection: GatewayConnection
    hello: HelloOk
    adopted: bool


@dataclass(frozen=True)
class ConnectFailed:
    """The connector gave up: `fatal` errors (auth, protocol, a stranger on the port) are not retried."""
    gen: int
    error: str
    fatal: bool
    exit_code: int = 1


@dataclass(frozen=True)
class PortFree:
    """Nothing answers on the port: spawn our own gateway."""
    gen: int


@dataclass(frozen=True)
class ProcessExited:
    gen: int
    pid: int
    info: ExitInfo


@dataclass(frozen=True)
class LinkLost:
    gen: int
    down: LinkDown


@dataclass(frozen=True)
class GatewayShutdown:
    """The gateway announced it is stopping; restart_expected is seconds, or None when it is not coming back."""
    gen: int
    reason: str
    restart_expected: float | None


@dataclass(frozen=True)
class HealthChecked:
    """The answer to one health RPC on `connection` (a result for an already dropped link is ignored)."""
    gen: int
    ok: bool
    error: str | None
    connection: GatewayConnection | None = None


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class RestartRequested:
    """Someone asked (control socket) for the gateway to be restarted."""
    reason: str


@dataclass(frozen=True)
class GatewayEventSeen:
    gen: int
    event: GatewayEvent


Message = Any  # one of the dataclasses above
