"""What the executor's worker threads do with the gateway: each takes the loop's `post` and reports one raw outcome
(the machine decides what it means); none of them ever runs on the loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from clawsvc.gateway import handoff, memory
from clawsvc.gateway.probes import readiness
from clawsvc.gateway.process import build_env
from clawsvc.gateway.protocol import describe_error
from clawsvc.service.effects import AskRestart, CheckHealth, ConsumeHandoff
from clawsvc.service.messages import (
    HandoffChecked,
    HealthChecked,
    MemorySampled,
    Message,
    ReadinessChecked,
    RestartAnswered,
)
from clawsvc.text import cut, printable

if TYPE_CHECKING:
    from clawsvc.gateway.connection import GatewayConnection

Post = Callable[[Message], None]
SAFE_RESTART_METHOD = "gateway.restart.request"
REASON_MAX = 200


def check_health(post: Post, connection: GatewayConnection | None, effect: CheckHealth) -> None:
    """The health RPC, then (when it answered) the gateway's /readyz and the memory its tree holds."""
    if connection is None:
        post(HealthChecked(effect.gen, effect.link, False, "the connection was closed"))
        return
    try:
        connection.rpc("health", None, timeout=effect.timeout)
    except Exception as exc:  # any failure is a failed check; the machine decides
        post(HealthChecked(effect.gen, effect.link, False, describe_error(exc)))
        return
    post(HealthChecked(effect.gen, effect.link, True, None))
    if (ready := readiness(effect.port)) is not None:
        post(ReadinessChecked(effect.gen, effect.link, ready.ready, ready.failing))
    if effect.pid is not None and (used := memory.sample(effect.pid)) is not None:
        post(MemorySampled(effect.gen, effect.link, effect.pid, *used))


def consume_handoff(post: Post, effect: ConsumeHandoff) -> None:
    """The gateway's CLI, with the gateway's own environment (no token), bounded in time."""
    accepted, said = handoff.consume(effect.config, effect.pid, build_env(effect.config, "", {}))
    post(HandoffChecked(effect.gen, effect.pid, accepted, said))


def ask_restart(post: Post, connection: GatewayConnection | None, effect: AskRestart) -> None:
    """The gateway's own safe restart (= `openclaw gateway restart --safe`); the machine decides on the answer."""
    if connection is None:
        post(RestartAnswered(effect.gen, effect.link, False, "the connection was closed"))
        return
    try:
        answer = connection.rpc(SAFE_RESTART_METHOD, {"reason": cut(effect.reason, REASON_MAX)})
    except Exception as exc:
        post(RestartAnswered(effect.gen, effect.link, False, describe_error(exc)))
    else:
        post(RestartAnswered(effect.gen, effect.link, True, summary=restart_summary(answer)))


def restart_summary(answer: Any) -> str | None:
    """The gateway's own words on what its accepted restart waits for: {"status": "deferred", "preflight":
    {"summary": "restart deferred: 1 pending reply delivery operation(s)", ...}, ...}."""
    preflight = answer.get("preflight") if isinstance(answer, dict) else None
    summary = preflight.get("summary") if isinstance(preflight, dict) else None
    return printable(cut(summary, REASON_MAX)) if isinstance(summary, str) and summary else None
