"""The Prometheus text exposition (format 0.0.4) of the published Snapshot and what the executor counts beside it.
The same text goes to `clawsvc metrics`, GET /metrics (metrics.listen) and metrics.textfile (exposition.py serves
and writes it). Pure: no clock, no I/O. What is shown is counts, states, sizes and versions, never a secret, a
path, a URL or anything of a chat."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clawsvc import __version__
from clawsvc.config import instances
from clawsvc.service.status import Snapshot, State

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Counts:
    """What is counted outside the state machine: by the event hub and the alert hooks (keyed by hook number)."""
    events_missed: int = 0
    alerts_sent: Mapping[str, int] = field(default_factory=dict)
    alerts_held_back: Mapping[str, int] = field(default_factory=dict)
    alerts_failed: Mapping[str, int] = field(default_factory=dict)


def instance_of(source: str | Path | None) -> str | None:
    """The named instance a config belongs to (/etc/clawsvc/NAME.yaml of clawsvc@NAME.service), else None."""
    if source is None:
        return None
    path = Path(source)
    if path.parent != instances.CONFIG_DIR or path.suffix != ".yaml" or path.stem == "clawsvc":
        return None
    return path.stem if instances.INSTANCE_NAME.fullmatch(path.stem) else None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Text:
    def __init__(self, instance: str | None) -> None:
        self.base = {"instance": instance} if instance else {}
        self.lines: list[str] = []

    def family(self, name: str, kind: str, text: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> None:
        rows = [(labels, value) for labels, value in samples]
        if not rows:
            return
        self.lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in rows:
            merged = {**self.base, **labels}
            shown = ",".join(f'{key}="{_escape(str(item))}"' for key, item in merged.items())
            number = repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
            self.lines.append(f"{name}{{{shown}}} {number}" if shown else f"{name} {number}")


def _per_hook(counts: Mapping[str, int]) -> list[tuple[Mapping[str, str], float]]:
    return [({"hook": hook}, count) for hook, count in sorted(counts.items(), key=lambda item: int(item[0]))]


def render(snap: Snapshot, now: float, wall: float, counts: Counts = Counts()) -> str:
    """The exposition; `now` on the snapshot's monotonic clock, `wall` in seconds since the epoch."""
    out = _Text(instance_of(snap.config))
    running = snap.state is State.RUNNING
    out.family("clawsvc_gateway_up", "gauge", "1 when the gateway is running and connected (hello-ok), else 0.",
               [({}, 1 if running else 0)])
    out.family("clawsvc_gateway_ready", "gauge", "The gateway's own readiness (/readyz): 1 ready, else 0.",
               [({}, 1 if running and snap.ready else 0)])
    out.family("clawsvc_state", "gauge", "The service's state: 1 for the current one.",
               [({"state": state.value}, 1 if snap.state is state else 0) for state in State])
    out.family("clawsvc_gateway_restarts_total", "counter", "Gateway restarts by reason.",
               [({"reason": reason}, count) for reason, count in snap.restarts_by])
    if snap.last_start is not None:
        out.family("clawsvc_gateway_last_start_seconds", "gauge",
                   "Unix time of the gateway's last start (a spawn, or its own in-process restart).",
                   [({}, round(wall - (now - snap.last_start), 3))])
    out.family("clawsvc_health_check_failures_total", "counter", "Failed health checks of the gateway.",
               [({}, snap.health_failures)])
    if snap.memory is not None:
        out.family("clawsvc_gateway_resident_memory_bytes", "gauge",
                   "Memory the gateway uses: the resident memory of its processes, or its own cgroup's "
                   "memory.current.", [({}, snap.memory)])
    out.family("clawsvc_events_missed_total", "counter",
               "Events `clawsvc events` followers did not take in time (dropped for them).",
               [({}, counts.events_missed)])
    out.family("clawsvc_alerts_sent_total", "counter", "Runs of each alert hook (numbered as in the config, from 1).",
               _per_hook(counts.alerts_sent))
    out.family("clawsvc_alerts_held_back_total", "counter",
               "Events each alert hook was not run for: within its min_interval, or while it still ran.",
               _per_hook(counts.alerts_held_back))
    out.family("clawsvc_alerts_failed_total", "counter", "Alert hook runs that failed (exit status, HTTP status, "
               "timeout).", _per_hook(counts.alerts_failed))
    out.family("clawsvc_build_info", "gauge", "clawsvc's version and the gateway's (empty before its first hello-ok).",
               [({"version": __version__, "gateway_version": snap.gateway_version or ""}, 1)])
    return "\n".join(out.lines) + "\n"
