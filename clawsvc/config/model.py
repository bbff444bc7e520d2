"""The frozen, typed Config and its defaults (paths follow root vs. XDG); what counts as a secret env name."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from clawsvc.cachedir import cache_dir
from clawsvc.ownconfig import AUTH_FIX as AUTH_FIX
from clawsvc.ownconfig import GATEWAY_CONFIG as GATEWAY_CONFIG
from clawsvc.ownconfig import REJECTS as REJECTS
from clawsvc.secretrule import SECRET_WORDS
from clawsvc.users import service_uid

SECRET_ENV = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
REDACTED = "<redacted>"


class ConfigError(Exception):
    """A config file that cannot be used; str() is one line naming file:line and key."""


def _system_wide() -> bool:
    """Whether the system-wide defaults apply: root, or the service user the system unit runs as (`sudo -u clawsvc
    clawsvc doctor` reads /etc/clawsvc/clawsvc.yaml and the unit's paths, not a second state under its home)."""
    euid = os.geteuid()
    return euid == 0 or euid == service_uid()


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_config_path() -> Path:
    """-c is handled by the caller; then $CLAWSVC_CONFIG, /etc as root, else XDG config."""
    env = os.environ.get("CLAWSVC_CONFIG")
    if env:
        return Path(env)
    if _system_wide():
        return Path("/etc/clawsvc/clawsvc.yaml")
    return _xdg("XDG_CONFIG_HOME", ".config") / "clawsvc" / "clawsvc.yaml"


def user_state_root() -> Path:
    """A user's clawsvc state: $XDG_STATE_HOME/clawsvc (~/.local/state/clawsvc)."""
    return _xdg("XDG_STATE_HOME", ".local/state") / "clawsvc"


def default_state_dir() -> Path:
    if _system_wide():
        return Path("/var/lib/clawsvc/openclaw")
    return user_state_root() / "openclaw"


def default_compile_cache() -> Path:
    """Under clawsvc's cache directory (cachedir.cache_dir): where Node's compile cache outlives a restart."""
    return Path(cache_dir(os.environ, _system_wide())) / "node-compile-cache"


SYSTEM_CONTROL_SOCKET = Path("/run/clawsvc/control.sock")


def default_control_socket() -> Path:
    if _system_wide():
        return SYSTEM_CONTROL_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(f"/tmp/clawsvc-{os.getuid()}")
    return base / "clawsvc" / "control.sock"


@dataclass(frozen=True)
class MemoryConfig:
    """The memory watch of the gateway's process tree (sampled with the health checks); sizes in bytes."""
    warn_above: int | None = None     # an event (memory.high) and a note on STATUS=
    restart_above: int | None = None  # a draining restart, at most once per cooldown
    cooldown: float = 3600.0


@dataclass(frozen=True)
class GatewayConfig:
    command: tuple[str, ...] = ("openclaw",)
    port: int = 18789
    bind: str = "loopback"
    state_dir: Path = field(default_factory=default_state_dir)
    compile_cache: Path | None = field(default_factory=default_compile_cache)  # None: `false`, not set by clawsvc
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    adopt_existing: bool = True
    start_timeout: float = 120.0
    stop_timeout: float = 330.0  # the gateway's own policy: 315 s of drain + 15 s to close (see gateway.process)
    memory: MemoryConfig = field(default_factory=MemoryConfig)


@dataclass(frozen=True)
class AuthConfig:
    token_file: Path | None = None


@dataclass(frozen=True)
class ConnectionConfig:
    path: str = "/"
    request_timeout: float = 30.0
    handshake_timeout: float = 10.0
    ping_interval: float = 30.0


@dataclass(frozen=True)
class HealthConfig:
    interval: float = 30.0
    timeout: float = 5.0
    failures: int = 3
    tick_grace: float = 2.0
    not_ready_after: float = 300.0  # /readyz failing this long: the readiness.failing event (an alert)


@dataclass(frozen=True)
class ReconnectConfig:
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_attempts: int = 10
    stable_after: float = 60.0


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = field(default_factory=default_control_socket)
    group: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None   # "HOST:PORT" for GET /metrics
    textfile: Path | None = None  # node_exporter's textfile collector


@dataclass(frozen=True)
class AlertHook:
    """One `alerts:` entry: what it is told (event names), and how: a command (event JSON on stdin) or a webhook."""
    on: tuple[str, ...]
    command: tuple[str, ...] | None = None
    webhook: str | None = None
    headers_file: Path | None = None  # "Name: value" lines for the webhook (a bearer token), trusted like a secret
    min_interval: float = 60.0
    timeout: float = 10.0
    line: int = field(default=0, compare=False)  # where `on` is written (for messages naming file:line)

    @property
    def target(self) -> str:
        """The hook in words for log lines: its program, or the webhook's scheme, host and port (never its path)."""
        if self.command is not None:
            return f"command {self.command[0]}"
        from urllib.parse import urlsplit

        parts = urlsplit(self.webhook or "")
        return f"webhook {parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    gateway_stdout: str = "debug"
    gateway_stderr: str = "warning"
    suppress: tuple[re.Pattern[str], ...] = ()


DEFAULT_PROVIDERS = ("anthropic", "openai", "google", "openrouter")


NO_RESPAWN = "OPENCLAW_NO_RESPAWN"  # clawsvc sets it to 1: the gateway restarts itself in its own process


def fresh_process_restarts(config: Config) -> bool:
    """Whether the gateway restarts itself as a fresh process (exit 0, leaving a handoff for its supervisor) rather
    than in its own: only when gateway.env turns off the in-process restarts clawsvc asks for."""
    return config.gateway.env.get(NO_RESPAWN, "1").strip().lower() not in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    alerts: tuple[AlertHook, ...] = ()
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}{self.connection.path}"
