"""Handlers for exits, restart requests, signals, reloads and the book's own timers. Pure."""

from __future__ import annotations

import signal
from dataclasses import replace

from clawsvc import exitcodes
from clawsvc.config import fresh_process_restarts, gateway_affecting
from clawsvc.exits import ExitKind
from clawsvc.service import catalogue
from clawsvc.service.backoff import forgiven
from clawsvc.service.effects import (
    ERROR,
    INFO,
    AbortConnect,
    ApplyConfig,
    AskRestart,
    ConsumeHandoff,
    Effect,
    Emit,
    LoadConfig,
    Log,
    Notify,
    NotifyKind,
    Reply,
    StopProcess,
)
from clawsvc.service.messages import (
    ConfigFailed,
    ConfigLoaded,
    HandoffChecked,
    ProcessExited,
    RestartCause,
    RestartMode,
    RestartRequested,
    SignalReceived,
    TimerFired,
)
from clawsvc.service.moves import (
    EXTEND_EVERY,
    FORCE_GRACE,
    SAFE_RESTART_BOUND,
    Outcome,
    begin,
    drop_link,
    fail,
    schedule_restart,
    shutdown,
)
from clawsvc.service.states import (
    AwaitingHello,
    BackingOff,
    HandingOff,
    MState,
    Reconnecting,
    Replacing,
    Restarting,
    Running,
    Spawning,
    Stopped,
    Stopping,
    adopted,
    link_of,
    pid_of,
    restarted,
    spawning,
    with_book,
)

NOT_OWNED = ("NOT_OWNED", "the gateway was adopted, not started by clawsvc; restart it where it was started")



def exited(message: ProcessExited) -> Emit:
    info = message.info
    return catalogue.EXITED(message.pid, info.describe(), info.returncode, info.signal)


def on_crash(state: AwaitingHello | Running | Reconnecting | Replacing, message: ProcessExited,
             now: float) -> Outcome:
    """Our gateway exited on its own (or as replaced): 78 ends clawsvc, anything else is restarted."""
    book = state.book
    ran = now - book.ready_at if book.ready_at is not None else 0.0
    last = message.info.describe()
    book = replace(book, last_exit=last, ready_at=None)
    effects: list[Effect] = [exited(message), *drop_link(state), AbortConnect()]
    if message.info.returncode == 0 and fresh_process_restarts(book.config) and not isinstance(state, Replacing):
        return HandingOff(book, message.pid), [*effects, ConsumeHandoff(book.gen, message.pid, book.config)]
    cause = message.info.cause
    if (cause is not None and cause.kind in FINAL) or (cause is None and message.info.returncode == exitcodes.CONFIG):
        why = cause.text if cause is not None else ("its configuration is unusable; see its last log lines above")
        new, more = fail(book, f"gateway pid {message.pid} {last}: {why}", exitcodes.CONFIG)
        return new, effects + more
    if forgiven(book.attempts, ran, book.config.reconnect):
        book = replace(book, attempts=0)
    what = f"gateway pid {message.pid} {last}" + (f": {cause.text}" if cause is not None else "")
    if isinstance(state, Replacing):
        what = f"gateway pid {message.pid} replaced ({state.cause})"
    new, more = schedule_restart(book, what, now, RestartCause.HANG if isinstance(state, Replacing)
                                 else RestartCause.CRASH)
    return new, effects + more


def on_handoff(state: HandingOff, message: HandoffChecked, now: float) -> Outcome:
    """The gateway's own fresh-process restart (its handoff accepted) is a planned restart; anything else a crash."""
    if message.pid != state.pid:
        return state, []
    book = state.book
    if not message.accepted:
        return schedule_restart(book, f"gateway pid {state.pid} exited 0 without a restart handoff for clawsvc "
                                      f"({message.said})", now)
    new, effects = begin(restarted(book, RestartCause.REQUESTED), now)  # asked for by the gateway itself
    return new, [Log(INFO, f"gateway pid {state.pid} restarted itself as a fresh process (its handoff: "
                           f"{message.said}); starting the new one"), *effects]


def on_planned_exit(state: Restarting, message: ProcessExited, now: float) -> Outcome:
    last = message.info.describe()
    book = replace(restarted(state.book, state.cause), last_exit=last, ready_at=None)
    new, effects = begin(book, now)
    return new, [Log(INFO, f"gateway pid {message.pid} {last}; starting it again as asked"), exited(message),
                 *drop_link(state), *effects]


def on_final_exit(state: Stopping, message: ProcessExited, now: float) -> Outcome:
    last = message.info.describe()
    return Stopped(replace(state.book, last_exit=last)), [Log(INFO, f"gateway pid {message.pid} {last}"),
                                                          exited(message), *drop_link(state)]


def _restart_mode(state: MState, message: RestartRequested) -> RestartMode:
    """SAFE only for a running gateway of ours (the gateway restarts itself); otherwise a new process."""
    if message.mode is RestartMode.SAFE and not (isinstance(state, Running) and state.pid is not None):
        return RestartMode.FRESH
    return message.mode


FINAL = (ExitKind.CONFIG, ExitKind.SCHEMA)  # what only a person can fix: clawsvc exits 78, systemd does not loop
HOW = {RestartMode.SAFE: "once its active work is done", RestartMode.FRESH: "after it finishes its active work",
       RestartMode.FORCE: "at once"}


def on_restart(state: MState, message: RestartRequested, now: float) -> Outcome:
    """SAFE asks a running gateway of ours to restart itself once its work is done; FRESH drains it (SIGTERM)
    and starts a new process; FORCE stops it at once. With nothing of ours running, start again at once."""
    if adopted(state) and message.reply is not None:
        return state, [Reply(message.reply, None, NOT_OWNED)]
    mode = _restart_mode(state, message)
    effects: list[Effect] = [Log(INFO, f"gateway restart requested ({message.reason}); restarting it {HOW[mode]}"),
                             catalogue.RESTART_REQUESTED(message.reason)]
    if message.reply is not None:  # `restarts`: the count once this restart is done, for a client to watch
        effects.append(Reply(message.reply, {"restarting": True, "mode": mode.value,
                                             "restarts": state.book.restarts + 1}))
    pid, book = pid_of(state), state.book
    if isinstance(state, Restarting):
        return state, effects
    if isinstance(state, Running) and state.restart is not None and mode is RestartMode.SAFE:
        return state, effects  # the gateway restarts itself soon: that restart serves this request too
    cause = message.cause
    if mode is RestartMode.SAFE:
        assert isinstance(state, Running)
        asked = replace(state, restart=message.reason, restart_by=now + SAFE_RESTART_BOUND, restart_cause=cause)
        return asked, [*effects, AskRestart(book.gen, state.link, message.reason)]
    if isinstance(state, Spawning):
        return Restarting(book, None, message.reason, cause=cause), effects
    if pid is None:
        new, more = begin(restarted(book, cause), now)
        return new, [*effects, AbortConnect(), *drop_link(state), *more]
    if mode is RestartMode.FORCE:
        stop = StopProcess(pid, FORCE_GRACE)
        return Restarting(book, pid, message.reason, cause=cause), [*effects, AbortConnect(), *drop_link(state), stop]
    return Restarting(book, pid, message.reason, link_of(state), cause=cause), \
        [*effects, AbortConnect(), StopProcess(pid)]


def on_signal(state: MState, message: SignalReceived, now: float) -> Outcome:
    book = state.book
    if message.signum == signal.SIGHUP:
        reloading: list[Effect] = [Notify(NotifyKind.RELOADING)] if book.ready_sent else []
        return state, [*reloading, LoadConfig(book.config.source)]
    if isinstance(state, Stopping):
        return state, []
    pid, pending = pid_of(state), spawning(state)
    what = " the gateway" if pid is not None or pending else ""
    new, effects = shutdown(book, pid, link_of(state), pending)
    text = f"received {signal.Signals(message.signum).name}; stopping{what}"
    return new, [Log(INFO, text), Notify(NotifyKind.STOPPING), *effects]


def _reload_done(ready_sent: bool, suffix: str = "") -> Notify:
    """Close the RELOADING=1 cycle; before the first hello-ok there is no readiness to re-announce."""
    return Notify(NotifyKind.READY if ready_sent else NotifyKind.STATUS, suffix=suffix)


def on_config_loaded(state: MState, message: ConfigLoaded, now: float) -> Outcome:
    """The new config applies in place; what the gateway reads (and the secrets) restarts it."""
    book = state.book
    old, new = book.config, message.config
    changed = gateway_affecting(old, new)
    stopping = isinstance(state, Stopping)
    if not stopping and (message.token, dict(message.provider_env)) != (book.token, dict(book.provider_env)):
        changed.append("the gateway token or provider keys")
    effects: list[Effect] = [ApplyConfig(old, new)]
    effects.append(catalogue.RELOAD(True, [] if stopping else changed, None))
    if not changed or stopping:
        effects.append(Log(INFO, f"reloaded {new.source}; no gateway restart needed"))
        return with_book(state, replace(book, config=new)), [*effects, _reload_done(book.ready_sent)]
    book = replace(book, config=new, token=message.token, provider_env=message.provider_env)
    what = ", ".join(changed)
    effects.append(Log(INFO, f"reloaded {new.source}; {what} changed, restarting the gateway"))
    asked = RestartRequested(f"config reload changed {what}", cause=RestartCause.RELOAD)
    new_state, more = on_restart(with_book(state, book), asked, now)
    return new_state, [*effects, *more, _reload_done(book.ready_sent)]


def on_config_failed(state: MState, message: ConfigFailed, now: float) -> Outcome:
    text = f"reload failed, still running on the previous config: {message.problem}"
    return state, [Log(ERROR, text), catalogue.RELOAD(False, [], message.problem),
                   _reload_done(state.book.ready_sent, f" (reload failed: {message.problem})")]


def on_watchdog(state: MState, message: TimerFired, now: float) -> Outcome:
    book = state.book
    every = book.watchdog_every or 1.0
    return with_book(state, replace(book, watchdog_at=now + every)), [Notify(NotifyKind.WATCHDOG)]


def on_extend(state: MState, message: TimerFired, now: float) -> Outcome:
    if state.book.extend_at is None:
        return state, []
    book = replace(state.book, extend_at=now + EXTEND_EVERY)
    return with_book(state, book), [Notify(NotifyKind.EXTEND_TIMEOUT, EXTEND_EVERY * 3)]


def on_backoff_over(state: BackingOff, message: TimerFired, now: float) -> Outcome:
    return begin(state.book, now)
