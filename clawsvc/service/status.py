"""The supervisor's published state: an immutable snapshot other threads may read, and its one-line form."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from clawsvc.config import Config


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
    state: str
    pid: int | None
    port: int
    owned: bool
    gateway_version: str | None
    ready_at: float | None       # monotonic
    connected_at: float | None   # epoch
    error: str | None
    cause: str | None
    reconnect_attempts: int
    restarts: int
    last_exit: str | None
    service_pid: int
    started_at: float            # monotonic
    config: str | None
    max_attempts: int

    @classmethod
    def empty(cls, config: Config, service_pid: int) -> Snapshot:
        return cls("stopped", None, config.gateway.port, True, None, None, None, None, None, 0, 0, None,
                   service_pid, time.monotonic(), str(config.source) if config.source else None,
                   config.reconnect.max_attempts)

    def uptime(self, now: float) -> float | None:
        return now - self.ready_at if self.ready_at is not None and self.state == "running" else None

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "state": self.state, "pid": self.pid, "port": self.port, "owned": self.owned,
            "gatewayVersion": self.gateway_version, "uptime": self.uptime(now), "connectedAt": self.connected_at,
            "error": self.error, "cause": self.cause, "reconnectAttempts": self.reconnect_attempts,
            "restarts": self.restarts, "lastExit": self.last_exit, "servicePid": self.service_pid,
            "serviceUptime": now - self.started_at, "config": self.config,
        }


def status_line(snap: Snapshot, now: float) -> str:
    """What `systemctl status` shows on its Status: line."""
    where = f"pid={snap.pid} port={snap.port}" if snap.pid else f"port={snap.port}"
    if snap.state == "running":
        uptime = snap.uptime(now)
        adopted = "" if snap.owned else " adopted"
        return (f"running {where} gateway={snap.gateway_version or '?'} "
                f"uptime={human_duration(uptime or 0)}{adopted}")
    if snap.state == "reconnecting":
        attempts = f" attempt {snap.reconnect_attempts}/{snap.max_attempts or '∞'}" if snap.reconnect_attempts else ""
        return f"reconnecting {where}:{attempts} {snap.cause or ''}".rstrip()
    if snap.state == "error":
        return f"error: {snap.error or snap.cause or 'unknown'}"
    return f"{snap.state} {where}" + (f": {snap.cause}" if snap.cause else "")
