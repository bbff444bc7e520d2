"""Handlers while starting: the port probe, the spawn and the handshake (classified here, not by the connector)."""

from __future__ import annotations

from dataclasses import replace

from clawsvc import exitcodes
from clawsvc.config import AUTH_FIX, GATEWAY_CONFIG, REJECTS
from clawsvc.service import catalogue
from clawsvc.service.effects import DEBUG, ERROR, INFO, Connect, Effect, Log, Notify, NotifyKind, Spawn, StopProcess
from clawsvc.service.messages import (
    HandshakeDone,
    HandshakeFailed,
    HandshakeKind,
    PortFree,
    PortTaken,
    Spawned,
    SpawnFailed,
    TimerFired,
)
from clawsvc.service.moves import Outcome, fail, fail_in, reconnect, replace_gateway, schedule_restart
from clawsvc.service.states import (
    Adopting,
    AwaitingHello,
    LockedOut,
    MState,
    Probing,
    Reconnecting,
    Restarting,
    Running,
    Spawning,
    Stopped,
    Stopping,
)


def on_port_free(state: Probing, message: PortFree, now: float) -> Outcome:
    book = state.book
    return Spawning(book), [Spawn(book.gen, book.config, book.token, book.provider_env)]


def on_port_taken(state: Probing, message: PortTaken, now: float) -> Outcome:
    book, port = state.book, state.book.config.gateway.port
    if not book.config.gateway.adopt_existing:
        return fail(book, f"port {port} is already in use by {message.holder}; free it, change gateway.port, "
                           "or set gateway.adopt_existing: true to attach to a gateway there", exitcodes.FAIL)
    connect = Connect(book.gen, book.config, book.token, adopting=True,
                      timeout=book.config.connection.handshake_timeout * 2, stranger=message.holder)
    text = f"port {port} is in use by {message.holder}; trying to adopt it as an existing gateway"
    return Adopting(book, message.holder), [Log(INFO, text), connect]


def on_spawned(state: Spawning, message: Spawned, now: float) -> Outcome:
    book, gateway = state.book, state.book.config.gateway
    text = (f"started gateway pid {message.pid} on port {gateway.port}; waiting for its hello-ok "
            f"(up to {gateway.start_timeout:.0f}s)")
    connect = Connect(book.gen, book.config, book.token, spawned=message.pid, timeout=gateway.start_timeout)
    waiting = AwaitingHello(replace(book, last_start=now), message.pid, now)
    return waiting, [Log(INFO, text), catalogue.SPAWNED(message.pid), connect]


def on_spawn_failed(state: Spawning | Restarting, message: SpawnFailed, now: float) -> Outcome:
    return fail(state.book, message.error, exitcodes.CONFIG)


def on_late_spawn(state: Restarting | Stopping, message: Spawned, now: float) -> Outcome:
    """A spawn reported after a restart or a stop was asked for: stop what it started."""
    return replace(state, pid=message.pid, **({"spawning": False} if isinstance(state, Stopping) else {})), \
        [catalogue.SPAWNED(message.pid), StopProcess(message.pid)]


def on_late_spawn_failed(state: Stopping, message: SpawnFailed, now: float) -> Outcome:
    return Stopped(state.book), []


def on_hello(state: Adopting | AwaitingHello | Reconnecting, message: HandshakeDone, now: float) -> Outcome:
    book = state.book
    pid = None if isinstance(state, Adopting) else state.pid
    starting = not isinstance(state, Reconnecting)
    how = "adopted existing gateway" if pid is None else f"gateway pid {pid}"
    took = f" {now - state.spawned_at:.2f}s after spawn" if isinstance(state, AwaitingHello) else ""
    text = (f"{how} is ready on port {book.config.gateway.port} (version {message.version}, "
            f"protocol {message.protocol}){took}")
    book = replace(book, version=message.version, ready_at=now if starting or book.ready_at is None else book.ready_at,
                   connected_at=now, error=None, extend_at=None, ready_sent=True)
    effects: list[Effect] = [Log(INFO, text)]
    if not state.book.ready_sent:
        effects += [Notify(NotifyKind.READY), catalogue.READY(message.version, pid)]
    return Running(book, pid, message.link, now + book.config.health.interval), effects


def fatal(state: MState, message: HandshakeFailed) -> tuple[str, int] | None:
    """Handshake failures retrying cannot fix, with the exit code they end clawsvc with."""
    port = state.book.config.gateway.port
    if message.kind is HandshakeKind.UNTRUSTED_PEER:
        return message.error, exitcodes.FAIL
    if message.kind is HandshakeKind.AUTH:
        return (f"the gateway on port {port} rejected our token: {message.error}; check auth.token_file or the "
                "gateway's own auth config"), exitcodes.CONFIG
    if message.kind is HandshakeKind.PROTOCOL:
        return f"protocol mismatch with the gateway: {message.error}", exitcodes.CONFIG
    if isinstance(state, Adopting) and message.kind is HandshakeKind.PEER_GONE:
        return (f"port {port} is held by {state.holder}, which closed every connection before clawsvc could "
                "verify who held its end; the gateway token was not sent; stop it or change gateway.port"), \
            exitcodes.FAIL
    if isinstance(state, Adopting) and message.kind is not HandshakeKind.RETRYABLE:
        return (f"port {port} is held by {state.holder}, which does not answer as an OpenClaw gateway "
                f"({message.error}); stop it or change gateway.port"), exitcodes.FAIL
    return None


def locked_out(state: AwaitingHello | Reconnecting, pid: int, now: float) -> Outcome:
    """Our gateway rejects our token: only its own openclaw.json can make it (gateway.env cannot set the token), and
    it keeps serving with it. Never a dead service: say what to undo, and ask again every reconnect.max_delay (a
    fix is hot-reloaded by the gateway, so the next attempt gets in). READY=1 when it was not sent yet: clawsvc is
    up and supervises a gateway that runs, and a `systemctl start` must not wait for a person."""
    book = state.book
    every = book.config.reconnect.max_delay
    cause = (f"gateway pid {pid} {REJECTS}: its own config {book.config.gateway.state_dir}/"
             f"{GATEWAY_CONFIG} sets gateway.auth.token, which wins over clawsvc's; run `{AUTH_FIX}` (it keeps "
             f"serving meanwhile; asked again every {every:g}s)")
    again = isinstance(state, Reconnecting) and state.cause == cause
    effects: list[Effect] = [Log(DEBUG if again else ERROR, cause)]
    if not book.ready_sent:
        book = replace(book, ready_sent=True, extend_at=None)
        effects.append(Notify(NotifyKind.READY))
    if not again:
        effects.append(catalogue.AUTH_REJECTED(pid, cause))
    return LockedOut(book, pid, now + every, cause), effects


def on_lockout_over(state: LockedOut, message: TimerFired, now: float) -> Outcome:
    return reconnect(state, state.cause, state.book.config.connection.handshake_timeout * 2)


def on_handshake_failed(state: Adopting | AwaitingHello | Reconnecting, message: HandshakeFailed,
                         now: float) -> Outcome:
    if message.kind is HandshakeKind.AUTH and not isinstance(state, Adopting) and state.pid is not None:
        return locked_out(state, state.pid, now)
    verdict = fatal(state, message)
    if verdict is not None:
        return fail_in(state, *verdict)
    error = message.error
    if message.timed_out:
        error = f"no hello-ok within {message.timeout:g}s (last answer: {error})"
    pid = None if isinstance(state, Adopting) else state.pid
    if pid is None:
        return schedule_restart(state.book, f"adopted gateway unreachable: {error}", now)
    if message.timed_out or message.kind is HandshakeKind.OTHER:
        return replace_gateway(state, pid, f"gateway did not answer a handshake: {error}")
    return state, []  # the connector stopped because our gateway died: its ProcessExited decides


