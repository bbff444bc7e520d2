"""Handlers while connected: gateway events, a lost link, health checks, a stable run. Pure."""

from __future__ import annotations

from dataclasses import replace

from clawsvc.service import catalogue
from clawsvc.service.backoff import forgiven
from clawsvc.service.effects import (
    DEBUG,
    INFO,
    WARNING,
    AbortConnect,
    CheckHealth,
    Effect,
    Emit,
    Log,
    Notify,
    NotifyKind,
    StopProcess,
)
from clawsvc.service.lifecycle import on_restart
from clawsvc.service.messages import (
    DrainNoticed,
    GatewayEventSeen,
    HealthChecked,
    LinkLost,
    MemorySampled,
    ReadinessChecked,
    RestartAnswered,
    RestartCause,
    RestartMode,
    RestartRequested,
    TimerFired,
)
from clawsvc.service.moves import SAFE_RESTART_BOUND, Outcome, reconnect, replace_gateway
from clawsvc.service.states import Restarting, Running, Stopping, restarted, with_book
from clawsvc.service.status import human_bytes


def on_event(state: Running, message: GatewayEventSeen, now: float) -> Outcome:
    """Every event goes to `clawsvc events` subscribers (ticks only to those asking for them by name)."""
    if message.link != state.link:
        return state, []
    emit = Emit(message.name, message.payload, "gateway", message.seq)
    if message.name != "shutdown":
        return state, [emit] if message.name == "tick" else [Log(DEBUG, f"gateway event {message.name}"), emit]
    payload = message.payload if isinstance(message.payload, dict) else {}
    reason = str(payload.get("reason", "")) or "no reason given"
    expected = payload.get("restartExpectedMs")
    if not isinstance(expected, int | float) or isinstance(expected, bool):
        return state, [Log(INFO, f"gateway announced shutdown ({reason})"), emit]
    book = state.book
    seconds = expected / 1000.0 + book.config.gateway.start_timeout
    text = f"gateway is restarting itself ({reason}); waiting up to {seconds:.0f}s for it instead of spawning another"
    if state.restart is not None:  # the safe restart we asked for has begun
        book = replace(restarted(book, state.restart_cause), last_start=now)
    new, effects = reconnect(with_book(state, book), f"gateway restarting itself ({payload.get('reason', '')})",
                             seconds)
    return new, [Log(INFO, text), emit, *effects]


def on_restart_answered(state: Running, message: RestartAnswered, now: float) -> Outcome:
    """The gateway accepted the safe restart (it announces `shutdown` when it begins), or refused it: then clawsvc
    drains it and starts a new one."""
    if message.link != state.link or state.restart is None:
        return state, []
    if message.ok:
        waits = f": {message.summary}" if message.summary else ""
        return replace(state, activity=message.summary), [
            Log(INFO, f"gateway accepted the restart ({state.restart}); it restarts once its active work is "
                      f"done{waits}")]
    return _drain_instead(state, f"the gateway refused its own restart: {message.error}")


def on_restart_overdue(state: Running, message: TimerFired, now: float) -> Outcome:
    return _drain_instead(state, f"the gateway had not begun the restart it accepted "
                                 f"{now - (state.restart_by or now) + SAFE_RESTART_BOUND:.0f}s later")


def _drain_instead(state: Running, why: str) -> Outcome:
    book, reason, pid = state.book, state.restart or "requested", state.pid
    assert pid is not None
    restarting = Restarting(book, pid, reason, state.link)
    return restarting, [Log(WARNING, f"{why}; stopping it (it finishes its active work first) and starting a new "
                                     "one"), AbortConnect(), StopProcess(pid)]


def on_drain_noticed(state: Running | Restarting | Stopping, message: DrainNoticed, now: float) -> Outcome:
    """What the gateway says its drain (or a restart it was asked for) still waits for: shown by `status`."""
    if isinstance(state, Running) and state.restart is None:
        return state, []
    return replace(state, activity=message.activity), [Log(INFO, f"gateway drain: {message.activity}")]


def on_draining_event(state: Restarting | Stopping, message: GatewayEventSeen, now: float) -> Outcome:
    """A gateway that is stopping still sends what it finishes (final replies, `shutdown`): pass it on."""
    if message.link != state.link:
        return state, []
    return state, [Emit(message.name, message.payload, "gateway", message.seq)]


def on_draining_link_lost(state: Restarting | Stopping, message: LinkLost, now: float) -> Outcome:
    if message.link != state.link:
        return state, []
    what = f"close {message.code}" if message.code is not None else "no close frame"
    return replace(state, link=None), [Log(INFO, f"the stopping gateway closed its connection ({what})")]


def on_link_lost(state: Running, message: LinkLost, now: float) -> Outcome:
    if message.link != state.link:
        return state, []
    config = state.book.config
    what = f"close {message.code}" if message.code is not None else "no close frame"
    text = (f"lost the connection to the gateway on port {config.gateway.port} ({what}: "
            f"{message.reason or 'no reason'}); reconnecting")
    new, effects = reconnect(state, f"link lost: {message.reason or what}",
                              config.connection.handshake_timeout * config.health.failures)
    return new, [Log(WARNING, text), *effects]


def on_health_due(state: Running, message: TimerFired, now: float) -> Outcome:
    if state.health_busy:
        return state, []
    config = state.book.config
    check = CheckHealth(state.book.gen, state.link, config.health.timeout, config.gateway.port, state.pid)
    return replace(state, health_at=None, health_busy=True), [check]


def on_health(state: Running, message: HealthChecked, now: float) -> Outcome:
    if message.link != state.link:
        return state, []  # the answer (usually "connection lost") of a link we already dropped
    health = state.book.config.health
    checked = replace(state, health_busy=False, health_at=now + health.interval)
    if message.ok:
        back = [Log(INFO, f"gateway health check ok again after {state.failures} failure(s)")]
        return replace(checked, failures=0), back if state.failures else []
    failures = state.failures + 1
    checked = with_book(checked, replace(checked.book, health_failures=checked.book.health_failures + 1))
    effects: list[Effect] = [Log(WARNING, f"gateway health check failed ({failures}/{health.failures}): "
                                          f"{message.error}"),
                             catalogue.HEALTH_FAILED(failures, health.failures, message.error)]
    if failures < health.failures:
        return replace(checked, failures=failures), effects
    if checked.pid is None:
        new, more = reconnect(checked, f"{health.failures} failed health checks",
                               state.book.config.gateway.start_timeout)
    else:
        new, more = replace_gateway(checked, checked.pid, f"{health.failures} consecutive failed health checks; "
                                                   f"last: {message.error}")
    return new, effects + more


def on_readiness(state: Running, message: ReadinessChecked, now: float) -> Outcome:
    """The gateway's own readiness (channels, agent databases, plugin reloads): shown, and an event when it
    changes, and one more (readiness.failing, for alerts) once it has failed for health.not_ready_after; the gateway
    is not replaced for it (it recovers its channels itself)."""
    book = state.book
    if message.link != state.link:
        return state, []
    since = None if message.ready else book.not_ready_since if book.not_ready_since is not None else now
    book = replace(book, not_ready_since=since, not_ready_told=book.not_ready_told and since is not None)
    effects: list[Effect] = []
    if (message.ready, message.failing) != (state.book.ready, state.book.failing):
        if message.ready:
            text = "gateway is ready again (its /readyz)" if book.ready is False else "gateway is ready (its /readyz)"
            level = INFO
        else:
            text, level = f"gateway is not ready: its /readyz names {', '.join(message.failing) or 'nothing'} " \
                          "failing", WARNING
        book = replace(book, ready=message.ready, failing=message.failing)
        effects += [Log(level, text), Notify(NotifyKind.STATUS),
                    catalogue.READINESS(message.ready, list(message.failing))]
    lasting = book.config.health.not_ready_after
    if since is not None and not book.not_ready_told and now - since >= lasting:
        book = replace(book, not_ready_told=True)
        effects += [Log(WARNING, f"gateway has not been ready for {now - since:.0f}s (health.not_ready_after "
                                 f"{lasting:g}s): its /readyz names {', '.join(message.failing) or 'nothing'}"),
                    catalogue.NOT_READY(list(message.failing), now - since)]
    return with_book(state, book), effects


def on_memory(state: Running, message: MemorySampled, now: float) -> Outcome:
    """The memory watch: above warn_above an event and a note on STATUS=; above restart_above a draining restart
    (FRESH: SIGTERM, the gateway finishes its active work, then a new process: only a new process gives the memory
    back, an in-process restart keeps the heap's high-water mark), at most once per cooldown, so a threshold below
    what a fresh gateway needs restarts it once per cooldown, never in a loop."""
    if message.link != state.link or message.pid != state.pid:
        return state, []
    limits, old = state.book.config.gateway.memory, state.book
    high = limits.warn_above is not None and message.bytes > limits.warn_above
    book = replace(old, memory=message.bytes, memory_source=message.source, memory_high=high)
    effects: list[Effect] = []
    used = f"gateway pid {message.pid} uses {human_bytes(message.bytes)} ({WHAT_SAMPLED[message.source]})"
    if high and not old.memory_high:
        assert limits.warn_above is not None
        effects += [Log(WARNING, f"{used}, above gateway.memory.warn_above ({human_bytes(limits.warn_above)})"),
                    Notify(NotifyKind.STATUS), catalogue.MEMORY_HIGH(message.bytes, limits.warn_above, "warn")]
    elif old.memory_high and not high:
        effects += [Log(INFO, f"{used}, below gateway.memory.warn_above again"), Notify(NotifyKind.STATUS)]
    new = with_book(state, book)
    limit = limits.restart_above
    if limit is None or message.bytes <= limit or state.restart is not None:
        return new, effects
    if old.memory_restart_at is not None and now - old.memory_restart_at < limits.cooldown:
        return new, effects
    new = with_book(new, replace(book, memory_restart_at=now))
    why = f"memory: {human_bytes(message.bytes)} above gateway.memory.restart_above ({human_bytes(limit)})"
    effects += [Log(WARNING, f"{used}, above gateway.memory.restart_above ({human_bytes(limit)}); restarting it as a "
                             f"new process once its active work is done (no other memory restart within "
                             f"{limits.cooldown:g}s)"),
                catalogue.MEMORY_HIGH(message.bytes, limit, "restart")]
    restarting, more = on_restart(new, RestartRequested(why, None, RestartMode.FRESH, RestartCause.MEMORY), now)
    return restarting, effects + more


WHAT_SAMPLED = {"rss": "resident memory of its processes", "cgroup": "its cgroup's memory.current"}


def on_stable(state: Running, message: TimerFired, now: float) -> Outcome:
    book = state.book
    ran = now - book.ready_at if book.ready_at is not None else 0.0
    if not forgiven(book.attempts, ran, book.config.reconnect):
        return state, []
    return with_book(state, replace(book, attempts=0)), \
        [Log(INFO, f"gateway stable for {ran:.0f}s; restart attempt counter reset")]
