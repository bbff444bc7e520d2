"""Handlers while starting: the port probe, the spawn and the handshake (classified here, not by the connector)."""

from __future__ import annotations

from dataclasses import replace

from clawsvc import exitcodes
from clawsvc.service import catalogue
from clawsvc.service.effects import INFO, Connect, Effect, Log, Notify, NotifyKind, Spawn, StopProcess
from clawsvc.service.messages import (
    HandshakeDone,
    HandshakeFailed,
    HandshakeKind,
    PortFree,
    PortTaken,
    Spawned,
    SpawnFailed,
)
from clawsvc.service.moves import Outcome, fail, fail_in, replace_gateway, schedule_restart
from clawsvc.service.states import (
    Adopting,
    AwaitingHello,
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


def on_handshake_failed(state: Adopting | AwaitingHello | Reconnecting, message: HandshakeFailed,
                         now: float) -> Outcome:
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


