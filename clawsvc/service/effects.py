"""What the state machine asks for: effects as plain data; the executor carries them out off the loop."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawsvc.config import Config
from clawsvc.service.status import Snapshot

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # the logging module's levels, without importing it here


class NotifyKind(enum.Enum):
    """The sd_notify messages of clawsvc/service/notify.py; READY and STATUS carry the latest published status line."""
    READY = "ready"
    STATUS = "status"
    RELOADING = "reloading"
    STOPPING = "stopping"
    WATCHDOG = "watchdog"
    EXTEND_TIMEOUT = "extend-timeout"


@dataclass(frozen=True)
class Probe:
    gen: int
    port: int


@dataclass(frozen=True)
class Spawn:
    gen: int
    config: Config
    token: str = field(repr=False)
    provider_env: Mapping[str, str] = field(repr=False)


@dataclass(frozen=True)
class Connect:
    """Handshake until hello-ok. The token goes only to the process tree of `spawned`, or (adopting) to our uid;
    `stranger` names who held the port when adopting (then only a "retry later" answer is retried)."""
    gen: int
    config: Config
    token: str = field(repr=False)
    adopting: bool = False
    spawned: int | None = None
    timeout: float = 0.0
    stranger: str | None = None


@dataclass(frozen=True)
class AbortConnect:
    pass


@dataclass(frozen=True)
class CloseLink:
    link: int


@dataclass(frozen=True)
class StopProcess:
    """SIGTERM to the gateway's main process (it drains its work), SIGKILL of its group after `grace` seconds
    (None: gateway.stop_timeout)."""
    pid: int
    grace: float | None = None


@dataclass(frozen=True)
class AskRestart:
    """gateway.restart.request on `link`: the gateway restarts itself once its active work has drained."""
    gen: int
    link: int
    reason: str


@dataclass(frozen=True)
class ConsumeHandoff:
    """Ask the gateway's own CLI whether the gateway `pid` (exited 0) left a restart handoff; report HandoffChecked."""
    gen: int
    pid: int
    config: Config


@dataclass(frozen=True)
class CheckHealth:
    """A `health` RPC on `link`, then the gateway's /readyz on `port` and the memory of our gateway `pid`."""
    gen: int
    link: int
    timeout: float
    port: int
    pid: int | None = None


@dataclass(frozen=True)
class Notify:
    kind: NotifyKind
    seconds: float | None = None
    suffix: str = ""


@dataclass(frozen=True)
class Publish:
    view: Snapshot


@dataclass(frozen=True)
class LoadConfig:
    """Reload: read the config, run preflight and load the secrets, off the loop."""
    path: Path | None


@dataclass(frozen=True)
class ApplyConfig:
    old: Config
    new: Config


@dataclass(frozen=True)
class Reply:
    """Answer a control request: `result`, or `error` as (code, message)."""
    handle: object
    result: Mapping[str, Any] | None
    error: tuple[str, str] | None = None


@dataclass(frozen=True)
class Log:
    level: int
    text: str


@dataclass(frozen=True)
class Emit:
    """An event for `clawsvc events` subscribers: clawsvc's own (source "service") or one the gateway sent,
    with its seq. The executor stamps the wall-clock time when it hands it on."""
    name: str
    payload: Any
    source: str = "service"
    seq: int | None = None


Effect = (Probe | Spawn | Connect | AbortConnect | CloseLink | StopProcess | AskRestart | ConsumeHandoff | CheckHealth
          | Notify | Publish | LoadConfig | ApplyConfig | Reply | Log | Emit)
