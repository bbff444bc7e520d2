"""What the supervisor's loop is told: raw outcomes from I/O threads, signals, timers and control requests.

Small frozen values, never strings and never live objects: a connection is named by its link id, a process by
its pid. Only the state machine (clawsvc.service.machine) decides what an outcome means."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clawsvc.exits import ExitInfo

if TYPE_CHECKING:
    from clawsvc.config import Config


class HandshakeKind(enum.Enum):
    """What kind of error ended a handshake attempt (the connector translates the exception class)."""
    AUTH = "auth"
    PROTOCOL = "protocol"
    UNTRUSTED_PEER = "untrusted-peer"
    PEER_GONE = "peer-gone"  # the server end vanished before it could be verified: nothing was sent
    RETRYABLE = "retryable"
    TRANSPORT = "transport"
    OTHER = "other"


class TimerKind(enum.Enum):
    WATCHDOG = "watchdog"
    EXTEND = "extend-timeout"
    HEALTH = "health"
    BACKOFF = "backoff"
    STABLE = "stability"
    RESTART = "restart"  # a safe restart the gateway accepted but has not begun in time
    AUTH = "auth-retry"  # ask again a gateway that rejected clawsvc's token (its openclaw.json set its own)


class RestartMode(enum.Enum):
    """How a restart treats the gateway's work in flight."""
    SAFE = "safe"    # the gateway's own restart (gateway.restart.request): once its active work has drained
    FRESH = "fresh"  # a new process: SIGTERM (the gateway drains), then spawn; for new argv, env or code
    FORCE = "force"  # at once: SIGTERM, SIGKILL of its group after a short grace


class RestartCause(enum.Enum):
    """Why the gateway was restarted: the `reason` label of clawsvc_gateway_restarts_total."""
    CRASH = "crash"          # it exited on its own
    HANG = "hang"            # clawsvc replaced it: failed health checks, or no handshake
    REQUESTED = "requested"  # restart-gateway, or the gateway's own restart
    RELOAD = "reload"        # a reload changed what the gateway reads
    UPGRADE = "upgrade"      # `clawsvc upgrade` switched it
    MEMORY = "memory"        # gateway.memory.restart_above


@dataclass(frozen=True)
class PortFree:
    """Nothing listens on the port: spawn our own gateway."""
    gen: int


@dataclass(frozen=True)
class PortTaken:
    gen: int
    holder: str  # who holds it, in words ("another process" when it cannot be told)


@dataclass(frozen=True)
class Spawned:
    gen: int
    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    gen: int
    error: str  # one line naming the path and the fix


@dataclass(frozen=True)
class HandshakeDone:
    """hello-ok on the connection `link` (the executor holds the connection itself)."""
    gen: int
    link: int
    version: str
    protocol: int


@dataclass(frozen=True)
class HandshakeFailed:
    """The connector stopped trying; `timed_out` when it ran out of `timeout` on retryable answers."""
    gen: int
    kind: HandshakeKind
    error: str
    timed_out: bool = False
    timeout: float = 0.0


@dataclass(frozen=True)
class ProcessExited:
    gen: int
    pid: int
    info: ExitInfo


@dataclass(frozen=True)
class LinkLost:
    gen: int
    link: int
    code: int | None  # close code, None when there was no close frame
    reason: str


@dataclass(frozen=True)
class GatewayEventSeen:
    gen: int
    link: int
    name: str
    payload: Any
    seq: int | None = None  # the gateway's sequence number, where the frame had one


@dataclass(frozen=True)
class HealthChecked:
    """The answer to one health RPC on `link` (an answer for an already dropped link is ignored)."""
    gen: int
    link: int
    ok: bool
    error: str | None


@dataclass(frozen=True)
class ReadinessChecked:
    """What the gateway's /readyz said after a health check on `link`."""
    gen: int
    link: int
    ready: bool
    failing: tuple[str, ...]


@dataclass(frozen=True)
class MemorySampled:
    """What the gateway `pid` uses, sampled after a health check on `link`: its process tree's resident memory
    ("rss"), or its own cgroup's memory.current ("cgroup")."""
    gen: int
    link: int
    pid: int
    bytes: int
    source: str


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class RestartRequested:
    """A gateway restart, asked over the control socket (`reply` set) or by a reload (`reply` None).
    `reply` is opaque to the machine: it comes back in a Reply effect."""
    reason: str
    reply: object | None = None
    mode: RestartMode = RestartMode.FRESH
    cause: RestartCause = RestartCause.REQUESTED


@dataclass(frozen=True)
class RestartAnswered:
    """The gateway's answer to a safe-restart request on `link`: accepted, with its own summary of what it waits
    for ("restart deferred: 1 pending reply delivery operation(s)"), or refused / failed (`error`)."""
    gen: int
    link: int
    ok: bool
    error: str | None = None
    summary: str | None = None


@dataclass(frozen=True)
class HandoffChecked:
    """Whether the gateway `pid`, which exited 0, left a restart handoff for us (and what its CLI said)."""
    gen: int
    pid: int
    accepted: bool
    said: str


@dataclass(frozen=True)
class DrainNoticed:
    """What the gateway of this start says (in its log) its drain still waits for, or that it is done."""
    gen: int
    activity: str


@dataclass(frozen=True)
class ConfigLoaded:
    """A reload read, checked and resolved the secrets of `config`."""
    config: Config
    token: str = field(repr=False)
    provider_env: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class ConfigFailed:
    problem: str


@dataclass(frozen=True)
class TimerFired:
    kind: TimerKind


Message = (PortFree | PortTaken | Spawned | SpawnFailed | HandshakeDone | HandshakeFailed | ProcessExited
           | LinkLost | GatewayEventSeen | HealthChecked | ReadinessChecked | MemorySampled | SignalReceived
           | RestartRequested
           | RestartAnswered | DrainNoticed | HandoffChecked | ConfigLoaded | ConfigFailed | TimerFired)
