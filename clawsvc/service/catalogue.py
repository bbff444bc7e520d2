"""Every event name `clawsvc events` knows: clawsvc's own (name, payload fields, a one-line description, the
readable text) and the gateway's common ones (name and description; they pass through as the gateway sent them).

The machine's Emit effects are made here (`STATE(before, after, cause)`), so a name or a field cannot drift
between the code that publishes an event, `clawsvc events`, `--names`, the help and the alert hooks. Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from clawsvc.service.effects import Emit

Payload = Mapping[str, Any]


@dataclass(frozen=True)
class Kind:
    """One of clawsvc's own events."""
    name: str
    fields: tuple[str, ...]
    description: str
    render: Callable[[Payload], str]

    def __call__(self, *values: Any) -> Emit:
        """The Emit of this event, its payload's fields in the order of `fields`."""
        if len(values) != len(self.fields):
            raise TypeError(f"event {self.name} takes {len(self.fields)} values ({', '.join(self.fields)}), "
                            f"got {len(values)}")
        return Emit(self.name, dict(zip(self.fields, values, strict=True)))

    def payload(self, *values: Any) -> dict[str, Any]:
        return dict(self(*values).payload)

    def text(self, payload: object) -> str | None:
        """The readable form of a payload of this event; None for one without its fields (another version's)."""
        if not isinstance(payload, Mapping) or not all(field in payload for field in self.fields):
            return None
        try:
            return self.render(payload)
        except (TypeError, ValueError):  # a field of another type than ours: shown as JSON instead
            return None


def _state(p: Payload) -> str:
    return f"{p['from']} -> {p['to']}" + (f" ({p['cause']})" if p["cause"] else "")


def _reload(p: Payload) -> str:
    if not p["ok"]:
        return f"failed: {p['error']}"
    changed = p["changed"] or []
    return f"ok; {', '.join(map(str, changed))} changed" if changed else "ok"


def _ready(p: Payload) -> str:
    return f"gateway version {p['version']}" + (f", pid {p['pid']}" if p["pid"] else " (adopted)")


STATE = Kind("state", ("from", "to", "cause"), "the service changed state (starting, running, reconnecting, ...)",
             _state)
SPAWNED = Kind("gateway.spawned", ("pid",), "clawsvc started a gateway process", lambda p: f"pid {p['pid']}")
EXITED = Kind("gateway.exited", ("pid", "status", "returncode", "signal"),
              "a gateway process of clawsvc's exited (planned or not)", lambda p: f"pid {p['pid']} {p['status']}")
RESTART = Kind("restart", ("reason", "attempt", "delay"), "an unplanned exit or a failure: restarting after a delay",
               lambda p: f"in {float(p['delay']):.1f}s (attempt {p['attempt']}): {p['reason']}")
RESTART_REQUESTED = Kind("restart.requested", ("reason",), "a restart was asked for (restart-gateway, a reload)",
                         lambda p: str(p["reason"]))
HEALTH_FAILED = Kind("health.failed", ("failures", "limit", "error"), "a health check of the gateway failed",
                     lambda p: f"{p['failures']}/{p['limit']}: {p['error']}")
RELOAD = Kind("reload", ("ok", "changed", "error"), "the config was reloaded (SIGHUP): what changed, or why not",
              _reload)
READY = Kind("ready", ("version", "pid"), "the gateway answered its first hello-ok (READY=1)", _ready)
READINESS = Kind("readiness", ("ready", "failing"), "the gateway's own readiness (/readyz) changed: what fails",
                 lambda p: "ready" if p["ready"] else f"not ready: {', '.join(map(str, p['failing'])) or '?'}")
AUTH_REJECTED = Kind("auth.rejected", ("pid", "reason"), "the gateway rejects clawsvc's token (its own openclaw.json "
                     "set one): it serves on, clawsvc cannot reach it until the named fix", lambda p: str(p["reason"]))
ERROR = Kind("error", ("error", "exit_code"), "clawsvc gave up and is stopping with this exit code",
             lambda p: f"{p['error']} (exit {p['exit_code']})")
def _mib(value: Any) -> str:
    return f"{int(value) // (1 << 20)} MiB"


MEMORY_HIGH = Kind("memory.high", ("bytes", "limit", "action"),
                   "the gateway uses more memory than gateway.memory.warn_above (action warn) or restart_above "
                   "(action restart: a draining restart)",
                   lambda p: f"{_mib(p['bytes'])} above {_mib(p['limit'])}; {p['action']}")
REPLACED = Kind("gateway.replaced", ("pid", "reason"), "clawsvc is replacing a gateway that hangs (failed health "
                "checks, no handshake)", lambda p: f"pid {p['pid']}: {p['reason']}")
NOT_READY = Kind("readiness.failing", ("failing", "seconds"),
                 "the gateway's /readyz has failed for health.not_ready_after (channels down, ...)",
                 lambda p: f"not ready for {float(p['seconds']):.0f}s: {', '.join(map(str, p['failing'])) or '?'}")
SERVICE_FAILED = Kind("service.failed", ("unit", "result", "exit_code", "exit_status"),
                      "clawsvc itself failed and systemd gave up on it (OnFailure=, `clawsvc alert`)",
                      lambda p: f"{p['unit']}: {p['result'] or 'failed'}"
                                + (f" ({p['exit_code']} {p['exit_status']})" if p["exit_code"] else ""))
ROLLED_BACK = Kind("upgrade.rolled-back", ("version", "restored", "reason"),
                   "`clawsvc upgrade` rolled back: the old gateway keeps serving",
                   lambda p: f"{p['version']} -> back to {p['restored']}: {p['reason']}")
MISSED = Kind("missed", ("count",), "this consumer fell behind: events it did not take in time",
              lambda p: f"{p['count']} event(s) this consumer did not take in time")
DROPPED = Kind("dropped", ("reason",), "this consumer took nothing for too long and was dropped",
               lambda p: str(p["reason"]))

SERVICE: Mapping[str, Kind] = {kind.name: kind for kind in (
    STATE, SPAWNED, EXITED, RESTART, RESTART_REQUESTED, HEALTH_FAILED, RELOAD, READY, READINESS, NOT_READY, ERROR,
    REPLACED, MEMORY_HIGH, SERVICE_FAILED, ROLLED_BACK, AUTH_REJECTED, MISSED, DROPPED)}
# What alert hooks can be told: clawsvc's own events but those about one `clawsvc events` consumer. The gateway's
# pass through unread and may carry chat content: they never go to a hook.
HOOKABLE: frozenset[str] = frozenset(SERVICE) - {MISSED.name, DROPPED.name}

# The gateway's common events (its protocol docs); every other one it sends passes through under its own name.
GATEWAY: Mapping[str, str] = {
    "chat": "chat updates of a run: status, deltas, the final reply or an error",
    "agent": "agent run progress: tool calls, lifecycle",
    "sessions.changed": "the session index or a session's metadata changed",
    "health": "the gateway's health snapshot changed",
    "presence": "system presence snapshot",
    "heartbeat": "a heartbeat run's update",
    "cron": "a cron job ran or changed",
    "shutdown": "the gateway is stopping or restarting itself",
    "config.changed": "the gateway wrote its config (openclaw.json)",
    "skills.changed": "the skill catalogue or its eligibility changed",
    "plugins.changed": "a plugin runtime was published",
    "update.available": "a newer openclaw release exists (use `clawsvc upgrade`)",
    "exec.approval.requested": "a command waits for an operator's approval",
    "device.pair.requested": "a device asks to be paired",
    "tick": "keepalive every tickIntervalMs (only when asked for by name)",
}


def text(name: str, payload: object) -> str | None:
    """The readable form of one of clawsvc's own events; None when it has none (not ours, or another version's)."""
    kind = SERVICE.get(name)
    return None if kind is None else kind.text(payload)


def names() -> list[tuple[str, str, str]]:
    """(source, name, description) of every event in the catalogue, clawsvc's first."""
    own = [("service", name, kind.description) for name, kind in SERVICE.items()]
    return own + [("gateway", name, description) for name, description in GATEWAY.items()]
