"""Moves the state machine's handlers share: start, stop, fail, back off, replace, reconnect. Pure."""

from __future__ import annotations

from dataclasses import replace

from clawsvc import exitcodes
from clawsvc.service import catalogue
from clawsvc.service.backoff import restart_delay
from clawsvc.service.effects import (
    ERROR,
    WARNING,
    AbortConnect,
    CloseLink,
    Connect,
    Effect,
    Log,
    Probe,
    StopProcess,
)
from clawsvc.service.messages import RestartCause
from clawsvc.service.states import (
    BackingOff,
    Book,
    LockedOut,
    MState,
    Probing,
    Reconnecting,
    Replacing,
    Running,
    Stopped,
    Stopping,
    link_of,
    pid_of,
    restarted,
    spawning,
)

Outcome = tuple[MState, list[Effect]]
EXTEND_EVERY = 5.0  # while starting, tell systemd every 5 s that the start is still progressing
# The gateway bounds its own wait for active work at 5 minutes, then restarts anyway; past this, clawsvc stops
# waiting for it to begin and drains it itself.
SAFE_RESTART_BOUND = 360.0
FORCE_GRACE = 10.0  # restart-gateway --force: SIGTERM, then SIGKILL of the group after this many seconds



def begin(book: Book, now: float) -> Outcome:
    """A new start (generation): what was seen of the last gateway's memory and readiness goes with it."""
    book = replace(book, gen=book.gen + 1, extend_at=None if book.ready_sent else now, memory=None,
                   memory_source=None, memory_high=False, not_ready_since=None, not_ready_told=False)
    return Probing(book), [Probe(book.gen, book.config.gateway.port)]


def drop_link(state: MState) -> list[Effect]:
    link = link_of(state)
    return [] if link is None else [CloseLink(link)]


def shutdown(book: Book, pid: int | None, link: int | None, pending_spawn: bool) -> Outcome:
    """Stop our gateway: SIGTERM lets it finish its work; its link stays open meanwhile, so every event it sends
    while draining (final replies, `shutdown`) still reaches `clawsvc events`. An adopted one is left running."""
    book = replace(book, extend_at=None)
    effects: list[Effect] = [AbortConnect()]
    if pid is None:
        effects += [] if link is None else [CloseLink(link)]
        return (Stopped(book), effects) if not pending_spawn else (Stopping(book, None, True), effects)
    return Stopping(book, pid, pending_spawn, link), [*effects, StopProcess(pid)]


def fail(book: Book, error: str, code: int, pid: int | None = None, link: int | None = None,
          pending_spawn: bool = False) -> Outcome:
    """A problem retrying cannot fix: stop, and exit so systemd's Restart=/start limits decide."""
    new, effects = shutdown(replace(book, error=error, exit_code=code), pid, link, pending_spawn)
    return new, [Log(ERROR, f"{error}; stopping clawsvc (exit {code})"),
                 catalogue.ERROR(error, code), *effects]


def fail_in(state: MState, error: str, code: int) -> Outcome:
    return fail(state.book, error, code, pid_of(state), link_of(state), spawning(state))


def schedule_restart(book: Book, cause: str, now: float, kind: RestartCause = RestartCause.CRASH) -> Outcome:
    attempts = book.attempts + 1
    delay, seed = restart_delay(attempts, book.config.reconnect, book.seed)
    limit = book.config.reconnect.max_attempts
    book = replace(book, attempts=attempts, seed=seed)
    if delay is None:
        return fail(book, f"{cause}; gave up after {limit} attempts in a row", exitcodes.FAIL)
    book = restarted(book, kind)
    text = f"{cause}; restarting in {delay:.1f}s (attempt {attempts}/{limit or '∞'})"
    restart = catalogue.RESTART(cause, attempts, delay)
    return BackingOff(book, now + delay, cause), [Log(WARNING, text), restart]


def replace_gateway(state: MState, pid: int, why: str) -> Outcome:
    """Stop a misbehaving gateway of ours; its exit is then handled like a crash."""
    book = replace(state.book, error=why)
    effects = [Log(ERROR, f"replacing gateway pid {pid}: {why}"), catalogue.REPLACED(pid, why), AbortConnect(),
               *drop_link(state), StopProcess(pid)]
    return Replacing(book, pid, why), effects


def reconnect(state: Running | Reconnecting | LockedOut, why: str, timeout: float) -> Outcome:
    book = state.book
    connect = Connect(book.gen, book.config, book.token, adopting=state.pid is None, spawned=state.pid,
                      timeout=timeout)
    return Reconnecting(book, state.pid, why), [*drop_link(state), connect]


