"""Connector threads: find out what holds the port, wait for a gateway's hello-ok, and report the raw outcome
to the loop (what an outcome means is decided by clawsvc.service.machine).

The WebSocket, HTTP and retrying stacks are imported by the first handshake's thread, not at start: the gateway
is spawned before they are needed (tests/test_startup_imports.py)."""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from clawsvc.config import Config
from clawsvc.gateway.peercheck import PeerCheck, PeerGone
from clawsvc.gateway.ports import port_holder, port_in_use
from clawsvc.gateway.protocol import (
    AuthError,
    GatewayEvent,
    LinkDown,
    ProtocolMismatchError,
    RetryableError,
    TransportError,
    UntrustedPeerError,
    describe_error,
)
from clawsvc.service.messages import (
    GatewayEventSeen,
    HandshakeDone,
    HandshakeFailed,
    HandshakeKind,
    LinkLost,
    Message,
    PortFree,
    PortTaken,
)
from clawsvc.threads import start_thread

if TYPE_CHECKING:
    from clawsvc.gateway.connection import GatewayConnection

Post = Callable[[Message], None]
Register = Callable[[int, "GatewayConnection"], None]
_links = itertools.count(1)


def always() -> bool:
    return True


def _forward_event(post: Post, gen: int, link: int, event: GatewayEvent) -> None:
    post(GatewayEventSeen(gen, link, event.name, event.payload, event.seq))


def _forward_down(post: Post, gen: int, link: int, down: LinkDown) -> None:
    post(LinkLost(gen, link, down.code, down.reason))


def classify(error: BaseException) -> tuple[HandshakeKind, str]:
    """The kind of a handshake error and its one-line text; what it means is the state machine's call."""
    if isinstance(error, UntrustedPeerError):
        return HandshakeKind.UNTRUSTED_PEER, error.message
    if isinstance(error, PeerGone):
        return HandshakeKind.PEER_GONE, describe_error(error)
    if isinstance(error, AuthError):
        return HandshakeKind.AUTH, str(error)
    if isinstance(error, ProtocolMismatchError):
        return HandshakeKind.PROTOCOL, str(error)
    if isinstance(error, RetryableError):
        return HandshakeKind.RETRYABLE, describe_error(error)
    if isinstance(error, TransportError):
        return HandshakeKind.TRANSPORT, describe_error(error)
    return HandshakeKind.OTHER, describe_error(error)


class Connector:
    """Starts one short-lived thread per attempt; `abort` (a stop, a restart) ends any wait at once.
    A connection that reached hello-ok is handed to `register` under its link id before the loop hears of it."""

    def __init__(self, post: Post, register: Register) -> None:
        self.post = post
        self.register = register
        self.cancel = threading.Event()

    def _connection(self, config: Config, token: str, gen: int, link: int,
                    verify_peer: PeerCheck) -> GatewayConnection:
        from clawsvc.gateway.connection import GatewayConnection

        return GatewayConnection.from_config(
            config, token,
            on_event=functools.partial(_forward_event, self.post, gen, link),
            on_down=functools.partial(_forward_down, self.post, gen, link),
            verify_peer=verify_peer,
        )

    def _start(self, name: str, target: Callable[..., None], *args: object) -> None:
        self.abort()
        self.cancel = threading.Event()
        start_thread(name, target, self.cancel, *args)

    def abort(self) -> None:
        self.cancel.set()

    def probe(self, gen: int, port: int) -> None:
        """Report whether the port is free, or who holds it."""
        self._start("probe", self._probe, gen, port)

    def wait_ready(self, config: Config, token: str, gen: int, timeout: float, alive: Callable[[], bool],
                   adopting: bool = False, spawned: int | None = None, stranger: str | None = None) -> None:
        """Handshake until hello-ok, retrying while the gateway is still starting (or the link is coming back).
        The token goes only to the process tree of `spawned` (our gateway), or, adopting, to our own uid; the
        peer check is built here, by the caller, so that it records `spawned`'s start time now.
        With `stranger` (adopting whatever holds the port) only a "retry later" answer, or a server end that
        vanished before it could be verified, is retried."""
        verify_peer = PeerCheck(config.gateway.port, adopting, spawned)
        self._start("connect", self._wait_ready, config, token, gen, timeout, alive, verify_peer, stranger)

    def _probe(self, cancel: threading.Event, gen: int, port: int) -> None:
        if not port_in_use(port):
            self._report(cancel, PortFree(gen))
            return
        holder = port_holder(port)
        self._report(cancel, PortTaken(gen, holder.describe() if holder else "another process"))

    def _wait_ready(self, cancel: threading.Event, config: Config, token: str, gen: int, timeout: float,
                    alive: Callable[[], bool], verify_peer: PeerCheck, stranger: str | None) -> None:
        from clawsvc.gateway.readiness import connect_when_up

        retry_on = (RetryableError, PeerGone) if stranger is not None else (RetryableError, TransportError)
        links: list[int] = []

        def connect() -> GatewayConnection:
            """Each attempt a link id of its own: a late report of a closed attempt never names the live one."""
            links.append(next(_links))
            connection = self._connection(config, token, gen, links[-1], verify_peer)
            connection.connect()
            return connection

        started = time.monotonic()
        try:
            connection = connect_when_up(connect, config.gateway.port, cancel, timeout, alive, retry_on)
        except Exception as exc:  # reported, never lost: the loop decides what a failed handshake means
            kind, text = classify(exc)
            timed_out = isinstance(exc, retry_on) and time.monotonic() - started >= timeout
            self._report(cancel, HandshakeFailed(gen, kind, text, timed_out, timeout))
            return
        hello = connection.hello
        if cancel.is_set() or hello is None:
            connection.close()
            return
        self.register(links[-1], connection)
        self.post(HandshakeDone(gen, links[-1], hello.server_version, hello.protocol))

    def _report(self, cancel: threading.Event, message: Message) -> None:
        if not cancel.is_set():
            self.post(message)

