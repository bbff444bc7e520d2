"""The supervisor's whole policy as a pure function: step(state, message, now) -> (state, effects).

No threads, sockets, processes, clocks or logging here (nor in the modules it imports from this package):
the loop passes `now`, and what should happen comes back as effects (effects.py) for the executor.
TRANSITIONS says which messages each state takes and who handles them; ALLOWED says where each state may go;
`step` is the one place both are checked. A message a state does not take, or of an older start, is dropped."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from clawsvc.config import Config
from clawsvc.service import catalogue, lifecycle, running, starting
from clawsvc.service.effects import DEBUG, INFO, CloseLink, Effect, Log, Notify, NotifyKind, Publish, Reply
from clawsvc.service.messages import (
    ConfigFailed,
    ConfigLoaded,
    DrainNoticed,
    GatewayEventSeen,
    HandoffChecked,
    HandshakeDone,
    HandshakeFailed,
    HealthChecked,
    LinkLost,
    MemorySampled,
    Message,
    PortFree,
    PortTaken,
    ProcessExited,
    ReadinessChecked,
    RestartAnswered,
    RestartRequested,
    SignalReceived,
    Spawned,
    SpawnFailed,
    TimerFired,
    TimerKind,
)
from clawsvc.service.moves import Outcome, begin
from clawsvc.service.states import (
    Adopting,
    AwaitingHello,
    BackingOff,
    Book,
    HandingOff,
    LockedOut,
    MState,
    Probing,
    Reconnecting,
    Replacing,
    Restarting,
    Running,
    Spawning,
    Stopped,
    Stopping,
    view,
)
from clawsvc.service.status import State

Handler = Callable[[Any, Any, float], Outcome]
Key = tuple[type, type | TimerKind]
LIVE = (Probing, Adopting, Spawning, AwaitingHello, Running, Reconnecting, LockedOut, Replacing, Restarting,
        HandingOff, BackingOff)
ANY = (*LIVE, Stopping)
HELLO_STATES = (Adopting, AwaitingHello, Reconnecting)
CRASH_STATES = (AwaitingHello, Running, Reconnecting, LockedOut, Replacing)
DRAINING = (Restarting, Stopping)  # our gateway finishes its work; its link stays open until it closes it


def _rows(states: tuple[type, ...], key: type | TimerKind, handler: Handler) -> dict[Key, Handler]:
    return {(state, key): handler for state in states}


TRANSITIONS: dict[Key, Handler] = {
    (Probing, PortFree): starting.on_port_free,
    (Probing, PortTaken): starting.on_port_taken,
    (Spawning, Spawned): starting.on_spawned,
    (Spawning, SpawnFailed): starting.on_spawn_failed,
    (Restarting, Spawned): starting.on_late_spawn,
    (Restarting, SpawnFailed): starting.on_spawn_failed,
    (Stopping, Spawned): starting.on_late_spawn,
    (Stopping, SpawnFailed): starting.on_late_spawn_failed,
    **_rows(HELLO_STATES, HandshakeDone, starting.on_hello),
    **_rows(HELLO_STATES, HandshakeFailed, starting.on_handshake_failed),
    (LockedOut, TimerKind.AUTH): starting.on_lockout_over,
    (Running, GatewayEventSeen): running.on_event,
    (Running, LinkLost): running.on_link_lost,
    (Running, TimerKind.HEALTH): running.on_health_due,
    (Running, HealthChecked): running.on_health,
    (Running, ReadinessChecked): running.on_readiness,
    (Running, MemorySampled): running.on_memory,
    (Running, TimerKind.STABLE): running.on_stable,
    (Running, RestartAnswered): running.on_restart_answered,
    (Running, TimerKind.RESTART): running.on_restart_overdue,
    **_rows(DRAINING, GatewayEventSeen, running.on_draining_event),
    **_rows((Running, *DRAINING), DrainNoticed, running.on_drain_noticed),
    **_rows(DRAINING, LinkLost, running.on_draining_link_lost),
    **_rows(CRASH_STATES, ProcessExited, lifecycle.on_crash),
    (Restarting, ProcessExited): lifecycle.on_planned_exit,
    (Stopping, ProcessExited): lifecycle.on_final_exit,
    (BackingOff, TimerKind.BACKOFF): lifecycle.on_backoff_over,
    (HandingOff, HandoffChecked): lifecycle.on_handoff,
    **_rows(LIVE, RestartRequested, lifecycle.on_restart),
    **_rows(ANY, SignalReceived, lifecycle.on_signal),
    **_rows(ANY, ConfigLoaded, lifecycle.on_config_loaded),
    **_rows(ANY, ConfigFailed, lifecycle.on_config_failed),
    **_rows(ANY, TimerKind.WATCHDOG, lifecycle.on_watchdog),
    **_rows(ANY, TimerKind.EXTEND, lifecycle.on_extend),
}

_STOP = {Stopping, Stopped}
_RESTART = {Probing, Restarting}
ALLOWED: Mapping[type, frozenset[type]] = {state: frozenset({state, *targets}) for state, targets in {
    Probing: {Spawning, Adopting, *_RESTART, *_STOP},
    Adopting: {Running, BackingOff, *_RESTART, *_STOP},
    Spawning: {AwaitingHello, Restarting, *_STOP},
    AwaitingHello: {Running, LockedOut, Replacing, BackingOff, HandingOff, *_RESTART, *_STOP},
    Running: {Reconnecting, Replacing, BackingOff, HandingOff, *_RESTART, *_STOP},
    Reconnecting: {Running, LockedOut, Replacing, BackingOff, HandingOff, *_RESTART, *_STOP},
    LockedOut: {Reconnecting, BackingOff, *_RESTART, *_STOP},
    Replacing: {BackingOff, *_RESTART, *_STOP},
    Restarting: {*_RESTART, *_STOP},
    HandingOff: {BackingOff, *_RESTART, *_STOP},
    BackingOff: {*_RESTART, *_STOP},
    Stopping: {Stopped},
    Stopped: set(),
}.items()}


class IllegalMove(RuntimeError):
    """A handler returned a state its state may not go to: a bug in this package."""


def start(config: Config, token: str, provider_env: Mapping[str, str], now: float,
          watchdog_every: float | None, seed: int) -> Outcome:
    """The first state (probing the port) and its effects."""
    book = Book(config, token, provider_env, started_at=now, seed=seed, watchdog_every=watchdog_every,
                watchdog_at=now if watchdog_every else None)
    first, effects = begin(book, now)
    return first, _announce(Stopped(book), first, effects)


def step(state: MState, message: Message, now: float) -> Outcome:
    handler = TRANSITIONS.get((type(state), _key(message)))
    gen = getattr(message, "gen", state.book.gen)
    if handler is None or gen != state.book.gen:
        return state, _dropped(state, message, gen != state.book.gen)
    new, effects = handler(state, message, now)
    if type(new) not in ALLOWED[type(state)]:
        raise IllegalMove(f"{type(state).__name__} -> {type(new).__name__} on {type(message).__name__}")
    return new, _announce(state, new, effects)


def _key(message: Message) -> type | TimerKind:
    return message.kind if isinstance(message, TimerFired) else type(message)


def _dropped(state: MState, message: Message, stale: bool) -> list[Effect]:
    why = "from an earlier gateway generation" if stale else f"ignored in state {type(state).__name__}"
    effects: list[Effect] = [Log(DEBUG, f"{type(message).__name__} {why}")]
    if isinstance(message, HandshakeDone):
        effects.append(CloseLink(message.link))  # nobody wants this connection: close it
    if isinstance(message, RestartRequested) and message.reply is not None:
        effects.append(Reply(message.reply, None, ("UNAVAILABLE", f"clawsvc is {view(state).state.value}; "
                                                                  "the gateway is not restarted")))
    return effects


def _announce(old: MState, new: MState, effects: list[Effect]) -> list[Effect]:
    """Log a change of phase, publish a changed view and send STATUS once per transition (READY carries it
    when the handler sends READY); the `state` event comes after the handler's own events (its causes)."""
    before, after = view(old), view(new)
    out: list[Effect] = []
    changed: list[Effect] = []
    if before.state is not after.state:
        why = f" ({after.cause})" if after.cause and after.state is not State.ERROR else ""
        out.append(Log(INFO, f"state {before.state.value} -> {after.state.value}{why}"))
        changed.append(catalogue.STATE(before.state.value, after.state.value, after.cause))
    if after != before:
        out.append(Publish(after))
    ready = any(isinstance(effect, Notify) and effect.kind is NotifyKind.READY for effect in effects)
    if (before.state, before.cause) != (after.state, after.cause) and not ready:
        out.append(Notify(NotifyKind.STATUS))
    return out + effects + changed


