"""The supervisor's published state: an immutable snapshot (made by the pure machine, stamped by the executor
with the service's pid and the wall-clock connect time) other threads may read, its wire form (the `status`
reply, read back by the client with from_dict) and its two views: the one-line STATUS= and the `clawsvc status`
block. Pure: no I/O."""

from __future__ import annotations

import enum
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

from clawsvc.config import Config
from clawsvc.text import printable, shown

REPLIED = 0.0  # the monotonic instant of a snapshot read by from_dict: the moment the service answered
LAST_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z: a later connectedAt is no time this client can show


class State(enum.Enum):
    """The phase shown on STATUS= lines and by `clawsvc status`."""
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    ERROR = "error"
    STOPPING = "stopping"


_STATES = frozenset(state.value for state in State)


class BadSnapshot(ValueError):
    """A status reply that is not a snapshot; str() is one line naming the field."""


def human_duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}min {seconds % 60}s" if seconds % 60 else f"{seconds // 60}min"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}min"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


@dataclass(frozen=True)
class Snapshot:
    state: State
    pid: int | None
    port: int
    owned: bool
    gateway_version: str | None
    ready_at: float | None       # monotonic
    connected_at: float | None   # epoch: stamped by the executor from connected_mono, or read from a reply
    error: str | None
    cause: str | None
    reconnect_attempts: int
    restarts: int
    last_exit: str | None
    service_pid: int             # 0 until the executor stamps it
    started_at: float            # monotonic
    config: str | None
    max_attempts: int            # 0: unlimited, or not known (a status reply does not carry it)
    link: int | None = None      # the connection control-socket RPCs go to (not in the reply)
    connected_mono: float | None = None  # monotonic (not in the reply)
    ready: bool | None = None    # the gateway's /readyz at the last health check (None: not asked yet)
    failing: tuple[str, ...] = ()  # what /readyz names as failing (channels, agent databases, plugin reloads)
    restarts_by: tuple[tuple[str, int], ...] = ()  # (reason, count): clawsvc_gateway_restarts_total
    health_failures: int = 0
    last_start: float | None = None  # monotonic: our gateway's last spawn or in-process restart
    memory: int | None = None     # bytes our gateway uses (its process tree, or its own cgroup)
    memory_source: str | None = None  # "rss" | "cgroup"
    memory_high: bool = False     # above gateway.memory.warn_above

    @classmethod
    def empty(cls, config: Config, service_pid: int, now: float) -> Snapshot:
        return cls(State.STOPPED, None, config.gateway.port, True, None, None, None, None, None, 0, 0, None,
                   service_pid, now, str(config.source) if config.source else None,
                   config.reconnect.max_attempts)

    def uptime(self, now: float) -> float | None:
        return now - self.ready_at if self.ready_at is not None and self.state is State.RUNNING else None

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state.value, "pid": self.pid, "port": self.port, "owned": self.owned,
            "gatewayVersion": self.gateway_version, "uptime": self.uptime(now), "connectedAt": self.connected_at,
            "error": self.error, "cause": self.cause, "reconnectAttempts": self.reconnect_attempts,
            "restarts": self.restarts, "lastExit": self.last_exit, "servicePid": self.service_pid,
            "serviceUptime": now - self.started_at, "config": self.config, "ready": self.ready,
            "failing": list(self.failing), "memory": self.memory, "memoryHigh": self.memory_high,
        }

    @classmethod
    def from_dict(cls, data: object) -> Snapshot:
        """A `status` reply (to_dict's JSON, from a socket: untrusted) as a snapshot whose monotonic times count
        back from REPLIED. A key whose value may be null may also be missing. BadSnapshot for anything else."""
        if not isinstance(data, Mapping):
            raise BadSnapshot(f"the reply is {shown(data)}, not an object")
        field = _Fields(data)
        uptime = field.optional("uptime", _is_duration, "a number of seconds")
        return cls(
            state=field.required("state", _is_state, "a state name", State),
            pid=field.optional("pid", _is_pid, "a process id"),
            port=field.required("port", _is_port, "a port number"),
            owned=field.required("owned", _is_bool, "true or false"),
            gateway_version=field.optional("gatewayVersion", _is_str, "a string"),
            ready_at=None if uptime is None else REPLIED - uptime,
            connected_at=field.optional("connectedAt", _is_epoch, "a time in seconds since 1970"),
            error=field.optional("error", _is_str, "a string"),
            cause=field.optional("cause", _is_str, "a string"),
            reconnect_attempts=field.required("reconnectAttempts", _is_count, "a count"),
            restarts=field.required("restarts", _is_count, "a count"),
            last_exit=field.optional("lastExit", _is_str, "a string"),
            service_pid=field.required("servicePid", _is_pid, "a process id"),
            started_at=REPLIED - field.required("serviceUptime", _is_duration, "a number of seconds"),
            config=field.optional("config", _is_str, "a string"),
            max_attempts=0,
            ready=field.optional("ready", _is_bool, "true or false"),
            failing=tuple(field.optional("failing", _is_names, "a list of names") or ()),
            memory=field.optional("memory", _is_count, "a number of bytes"),
            memory_high=field.optional("memoryHigh", _is_bool, "true or false") or False,
        )


# ---------------------------------------------------------------- reading a reply

def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_EXACT = 2 ** 53  # larger integers are no time, pid or count a service reports (and overflow isfinite)


def _is_number(value: object) -> TypeGuard[float]:
    if isinstance(value, float):
        return math.isfinite(value)
    return _is_int(value) and abs(value) <= MAX_EXACT


def _is_state(value: object) -> bool:
    return isinstance(value, str) and value in _STATES


def _is_pid(value: object) -> bool:
    return _is_int(value) and 0 < value < 2**31


def _is_port(value: object) -> bool:
    return _is_int(value) and 0 < value < 65536


def _is_count(value: object) -> bool:
    return _is_int(value) and value >= 0


def _is_duration(value: object) -> bool:
    return _is_number(value) and value >= 0


def _is_epoch(value: object) -> bool:
    return _is_number(value) and 0 <= value <= LAST_EPOCH


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


MAX_FAILING = 50


def _is_names(value: object) -> bool:
    return isinstance(value, list) and len(value) <= MAX_FAILING and all(isinstance(name, str) for name in value)


class _Fields:
    """The values of a reply, each checked; a wrong one is a BadSnapshot naming its key."""

    def __init__(self, data: Mapping[Any, Any]) -> None:
        self.data = data

    def required(self, key: str, valid: Callable[[object], bool], wanted: str,
                 convert: Callable[[Any], Any] | None = None) -> Any:
        if key not in self.data:
            raise BadSnapshot(f'the reply has no "{key}"')
        return self._checked(key, valid, wanted, convert)

    def optional(self, key: str, valid: Callable[[object], bool], wanted: str) -> Any:
        return None if self.data.get(key) is None else self._checked(key, valid, wanted, None)

    def _checked(self, key: str, valid: Callable[[object], bool], wanted: str,
                 convert: Callable[[Any], Any] | None) -> Any:
        value = self.data[key]
        if not valid(value):
            raise BadSnapshot(f'the reply\'s "{key}" is {shown(value)}, not {wanted}')
        return value if convert is None else convert(value)


# ---------------------------------------------------------------- the STATUS= line

def status_line(snap: Snapshot, now: float) -> str:
    """What `systemctl status` shows on its Status: line."""
    where = f"pid={snap.pid} port={snap.port}" if snap.pid else f"port={snap.port}"
    if snap.state is State.RUNNING:
        uptime = snap.uptime(now)
        adopted = "" if snap.owned else " adopted"
        return (f"running {where} gateway={snap.gateway_version or '?'} "
                f"uptime={human_duration(uptime or 0)}{adopted}{_readiness_note(snap)}"
                + (f"; {snap.cause}" if snap.cause else ""))
    if snap.state is State.RECONNECTING:
        attempts = f" attempt {snap.reconnect_attempts}/{snap.max_attempts or '∞'}" if snap.reconnect_attempts else ""
        return f"reconnecting {where}:{attempts} {snap.cause or ''}".rstrip()
    if snap.state is State.ERROR:
        return f"error: {snap.error or snap.cause or 'unknown'}"
    return f"{snap.state.value} {where}" + (f": {snap.cause}" if snap.cause else "")


def _readiness_note(snap: Snapshot) -> str:
    memory = f" memory-high={human_bytes(snap.memory)}" if snap.memory_high and snap.memory is not None else ""
    return (f" not-ready={','.join(snap.failing) or '?'}" if snap.ready is False else "") + memory


def human_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f}{unit}" if count < 10 * size else f"{count // size}{unit}"
    return f"{count}B"


def _readiness(snap: Snapshot) -> str:
    if snap.ready is None:
        return "not asked yet (the gateway's /readyz, at each health check)"
    return "ready" if snap.ready else f"not ready: failing {', '.join(snap.failing) or '(not named)'}"


# ---------------------------------------------------------------- the `clawsvc status` block

def _bullet(running: bool) -> str:
    bullet = "●" if running else "○"
    try:
        bullet.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "*"
    return bullet


def _state_line(snap: Snapshot, now: float, wall_now: float) -> str:
    state, uptime, since = snap.state.value, snap.uptime(now), snap.connected_at
    if snap.state is State.RUNNING and since is not None:
        stamp = datetime.fromtimestamp(since).astimezone().strftime("%a %Y-%m-%d %H:%M:%S %Z")
        return f"{state} since {stamp}; {human_duration(wall_now - since)} ago"
    if uptime is not None:
        return f"{state} (gateway up {human_duration(uptime)})"
    if snap.state is State.RECONNECTING and snap.reconnect_attempts:
        return f"{state} (attempt {snap.reconnect_attempts})"
    return state


def _gateway_line(snap: Snapshot) -> str:
    parts = [f"pid {snap.pid}" if snap.pid else "no process", f"port {snap.port}"]
    if snap.gateway_version:
        parts.append(f"openclaw {snap.gateway_version}")
    if snap.pid or snap.state is State.RUNNING:
        parts.append("started by clawsvc" if snap.owned else "adopted (clawsvc will not stop it)")
    return ", ".join(parts)


def status_block(snap: Snapshot, socket_path: object, now: float, wall_now: float) -> str:
    """The human view of a snapshot, in the spirit of `systemctl status`; `now` on the snapshot's monotonic
    clock (REPLIED for one from from_dict), `wall_now` in seconds since the epoch."""
    rows = [("State", _state_line(snap, now, wall_now)), ("Gateway", _gateway_line(snap)),
            ("Restarts", f"{snap.restarts}, reconnect attempts: {snap.reconnect_attempts}")]
    if snap.state is State.RUNNING:
        rows.append(("Readiness", _readiness(snap)))
    if snap.memory is not None:
        rows.append(("Memory", human_bytes(snap.memory) + (" (above gateway.memory.warn_above)" if snap.memory_high
                                                           else "")))
    if snap.cause:
        rows.append(("Cause", snap.cause))
    if snap.last_exit:
        rows.append(("Last exit", snap.last_exit))
    if snap.error:
        rows.append(("Error", snap.error))
    rows += [("Service", f"pid {snap.service_pid}, up {human_duration(now - snap.started_at)}"),
             ("Config", snap.config or "built-in defaults"), ("Control", str(socket_path))]
    lines = [f"{_bullet(snap.state is State.RUNNING)} clawsvc - OpenClaw gateway service: {snap.state.value}"]
    lines += [f"{label:>10}: {printable(value)}" for label, value in rows]  # values may quote other processes
    return "\n".join(lines)
