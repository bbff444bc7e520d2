"""The supervisor's states: one frozen value per state, each holding the Book of what carries across states."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from clawsvc import exitcodes
from clawsvc.config import Config
from clawsvc.service.messages import RestartCause, TimerKind
from clawsvc.service.status import Snapshot, State

NO_RESTARTS = (0,) * len(RestartCause)


@dataclass(frozen=True)
class Book:
    config: Config
    token: str = field(repr=False)
    provider_env: Mapping[str, str] = field(repr=False)
    started_at: float
    seed: int                        # the restart policy's jitter is drawn from it (then it moves on)
    watchdog_every: float | None = None
    watchdog_at: float | None = None
    extend_at: float | None = None   # next EXTEND_TIMEOUT_USEC while the start has not reached READY=1
    gen: int = 0                     # one per start; outcomes of an older start are dropped
    ready_sent: bool = False
    restarts: int = 0
    attempts: int = 0                # failures in a row, for the restart policy
    version: str | None = None
    last_exit: str | None = None
    error: str | None = None
    exit_code: int = exitcodes.OK
    ready_at: float | None = None
    connected_at: float | None = None
    ready: bool | None = None        # the gateway's /readyz at the last health check
    failing: tuple[str, ...] = ()
    # what the metrics count and show (clawsvc.service.metrics)
    restarts_by: tuple[int, ...] = NO_RESTARTS  # restarts by RestartCause, in its order
    health_failures: int = 0
    last_start: float | None = None  # our gateway's last spawn or in-process restart
    not_ready_since: float | None = None  # /readyz has failed since (told: readiness.failing sent for it)
    not_ready_told: bool = False
    # the memory watch (running.on_memory): the last sample of our gateway, and the last restart it caused
    memory: int | None = None
    memory_source: str | None = None
    memory_high: bool = False
    memory_restart_at: float | None = None


def restarted(book: Book, cause: RestartCause) -> Book:
    """The book with one more restart, counted under its cause."""
    index = list(RestartCause).index(cause)
    by = tuple(count + (i == index) for i, count in enumerate(book.restarts_by))
    return replace(book, restarts=book.restarts + 1, restarts_by=by)


@dataclass(frozen=True)
class Probing:
    """Asked what holds the port."""
    book: Book


@dataclass(frozen=True)
class Adopting:
    """Something holds the port and adopt_existing is on: handshaking with it."""
    book: Book
    holder: str


@dataclass(frozen=True)
class Spawning:
    """Our gateway is being started (command check, leftovers, fork) off the loop."""
    book: Book


@dataclass(frozen=True)
class AwaitingHello:
    book: Book
    pid: int
    spawned_at: float


@dataclass(frozen=True)
class Running:
    """Connected; pid None means an adopted gateway. `restart`: the reason of a safe restart the gateway was asked
    for, which it must begin (announce `shutdown`) by `restart_by`."""
    book: Book
    pid: int | None
    link: int
    health_at: float | None
    health_busy: bool = False
    failures: int = 0
    restart: str | None = None
    restart_by: float | None = None
    activity: str | None = None  # what the gateway says the restart waits for
    restart_cause: RestartCause = RestartCause.REQUESTED


@dataclass(frozen=True)
class Reconnecting:
    """Lost the link (or the gateway restarts itself) and handshaking again with the same gateway."""
    book: Book
    pid: int | None
    cause: str


@dataclass(frozen=True)
class LockedOut:
    """Our gateway runs but rejects clawsvc's token: its own openclaw.json set gateway.auth (a token of its own wins
    over the one clawsvc hands it). It keeps serving; clawsvc asks it again at `retry_at` until that is undone."""
    book: Book
    pid: int
    retry_at: float
    cause: str


@dataclass(frozen=True)
class Replacing:
    """Stopping a misbehaving gateway of ours; its exit counts as a failure."""
    book: Book
    pid: int
    cause: str


@dataclass(frozen=True)
class Restarting:
    """A planned restart: stopping our gateway (pid None: its spawn has not reported yet) to start it again.
    While it drains, its events still arrive on `link` until it closes it."""
    book: Book
    pid: int | None
    reason: str
    link: int | None = None
    activity: str | None = None  # what the gateway says its drain still waits for
    cause: RestartCause = RestartCause.REQUESTED


@dataclass(frozen=True)
class HandingOff:
    """Our gateway `pid` exited 0 where it restarts itself as a fresh process: is it a restart (its handoff)?"""
    book: Book
    pid: int


@dataclass(frozen=True)
class BackingOff:
    book: Book
    until: float
    cause: str


@dataclass(frozen=True)
class Stopping:
    """Shutting down (book.exit_code set: because of an error); waiting for our gateway to drain its work and
    exit. Its events still arrive on `link` until it closes it."""
    book: Book
    pid: int | None
    spawning: bool = False
    link: int | None = None
    activity: str | None = None  # what the gateway says its drain still waits for


@dataclass(frozen=True)
class Stopped:
    book: Book


DRAINING = "; the gateway finishes its active work first"


def _draining(state: Restarting | Stopping) -> str:
    return DRAINING + (f" ({state.activity})" if state.activity else "")

MState = (Probing | Adopting | Spawning | AwaitingHello | Running | Reconnecting | LockedOut | Replacing | Restarting
          | HandingOff | BackingOff | Stopping | Stopped)
STARTING_STATES = (Probing, Adopting, Spawning, AwaitingHello, Restarting, HandingOff)


def phase(state: MState) -> State:
    if isinstance(state, STARTING_STATES):
        return State.STARTING
    if isinstance(state, Running):
        return State.RUNNING
    if isinstance(state, Reconnecting | LockedOut | Replacing | BackingOff):
        return State.RECONNECTING
    if state.book.exit_code != exitcodes.OK:
        return State.ERROR
    return State.STOPPING if isinstance(state, Stopping) else State.STOPPED


def cause(state: MState) -> str | None:
    if isinstance(state, Probing | Adopting | Spawning):
        return f"checking port {state.book.config.gateway.port}"
    if isinstance(state, AwaitingHello):
        return "waiting for hello-ok"
    if isinstance(state, Restarting):
        return f"restarting gateway ({state.reason})" + (_draining(state) if state.pid is not None else "")
    if isinstance(state, HandingOff):
        return f"gateway pid {state.pid} exited 0 to restart as a fresh process; checking its handoff"
    if isinstance(state, Reconnecting | LockedOut | Replacing | BackingOff):
        return state.cause
    if isinstance(state, Stopping | Stopped) and state.book.exit_code != exitcodes.OK:
        return state.book.error
    if isinstance(state, Stopping) and state.pid is not None:
        return _draining(state).removeprefix("; ")
    if isinstance(state, Running) and state.restart is not None:
        return (f"restart requested ({state.restart}); the gateway restarts once its active work is done"
                + (f" ({state.activity})" if state.activity else ""))
    return None


def pid_of(state: MState) -> int | None:
    if isinstance(state, AwaitingHello | Running | Reconnecting | LockedOut | Replacing | Restarting | Stopping):
        return state.pid
    return None


def link_of(state: MState) -> int | None:
    return state.link if isinstance(state, Running | Restarting | Stopping) else None


def adopted(state: MState) -> bool:
    return isinstance(state, Running | Reconnecting) and state.pid is None


def spawning(state: MState) -> bool:
    """A spawn was asked for and has not reported yet."""
    if isinstance(state, Restarting):
        return state.pid is None
    return isinstance(state, Spawning) or (isinstance(state, Stopping) and state.spawning)


def with_book(state: MState, book: Book) -> MState:
    return replace(state, book=book)


def view(state: MState) -> Snapshot:
    """What `clawsvc status` and STATUS= show; the executor stamps the service pid and the wall-clock times."""
    book = state.book
    config = book.config
    return Snapshot(
        state=phase(state), pid=pid_of(state), port=config.gateway.port, owned=not adopted(state),
        gateway_version=book.version, ready_at=book.ready_at, connected_at=None, error=book.error,
        cause=cause(state), reconnect_attempts=book.attempts, restarts=book.restarts, last_exit=book.last_exit,
        service_pid=0, started_at=book.started_at, config=str(config.source) if config.source else None,
        max_attempts=config.reconnect.max_attempts, link=link_of(state), connected_mono=book.connected_at,
        ready=book.ready if isinstance(state, Running) else None, failing=book.failing if isinstance(state, Running)
        else (),
        restarts_by=tuple(zip((cause.value for cause in RestartCause), book.restarts_by, strict=True)),
        health_failures=book.health_failures, last_start=book.last_start,
        memory=book.memory if isinstance(state, Running) else None, memory_source=book.memory_source,
        memory_high=book.memory_high and isinstance(state, Running),
    )


def next_deadline(state: MState) -> tuple[float, TimerKind] | None:
    """The earliest timer the loop must fire (as a TimerFired message) if nothing arrives before it."""
    if isinstance(state, Stopped):
        return None
    book = state.book
    due: list[tuple[float, TimerKind]] = []
    if book.watchdog_at is not None:
        due.append((book.watchdog_at, TimerKind.WATCHDOG))
    if book.extend_at is not None:
        due.append((book.extend_at, TimerKind.EXTEND))
    if isinstance(state, Running):
        if state.health_at is not None:
            due.append((state.health_at, TimerKind.HEALTH))
        if state.restart_by is not None:
            due.append((state.restart_by, TimerKind.RESTART))
        if book.attempts and book.ready_at is not None:
            due.append((book.ready_at + book.config.reconnect.stable_after, TimerKind.STABLE))
    if isinstance(state, BackingOff):
        due.append((state.until, TimerKind.BACKOFF))
    if isinstance(state, LockedOut):
        due.append((state.retry_at, TimerKind.AUTH))
    return min(due, key=lambda item: item[0], default=None)
