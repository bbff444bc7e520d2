"""Connector threads: find out what holds the port, wait for a gateway's hello-ok, and report the raw outcome
to the loop (what an outcome means is decided by clawsvc.service.machine).

The WebSocket, HTTP and retrying stacks are imported by the first handshake's thread, not at start: the gateway
is spawned before they are needed (tests/test_startup_imports.py)."""

from __future__ import annotations

import functools
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from clawsvc.config import Config
from clawsvc.gateway import ports
from clawsvc.gateway.ports import port_holder, port_in_use
from clawsvc.gateway.proctree import descendants
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


def readyz(port: int) -> bool:
    """The gateway's own HTTP readiness probe on its WebSocket port (200 once it can serve)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


class PeerGone(TransportError):
    """The server end of the connection closed before it could be verified; the next attempt verifies again."""


class PeerCheck:
    """GatewayConnection's verify_peer: the token goes only to the server end of this very connection when
    it is held by the gateway clawsvc spawned (that pid with the start time it had when this check was built,
    or one of its descendants), or, when adopting, by a socket of clawsvc's own euid held only by processes
    whose real and effective uids are that euid. Linux reads /proc; elsewhere (macOS) lsof names the holders,
    and a holder lsof cannot name is refused."""

    def __init__(self, port: int, adopting: bool, spawned: int | None) -> None:
        self.port = port
        self.adopting = adopting
        self.spawned = spawned
        self.spawned_start = ports.process_start(spawned) if spawned is not None else None

    def __call__(self, sock: socket.socket) -> None:
        try:
            local, peer = sock.getsockname(), sock.getpeername()
        except OSError as exc:
            raise PeerGone("CLOSED", f"connection to port {self.port} closed before it could be "
                                     f"verified: {describe_error(exc)}") from None
        holder = self._proc_holder(local, peer) if ports.have_proc_net() else self._lsof_holder(local, peer)
        if holder is None:
            return
        raise UntrustedPeerError("UNTRUSTED_PEER", f"port {self.port} is held by {holder.describe()}, "
                                                   f"{self._expected()}; the gateway token was not sent; stop "
                                                   "that process or change gateway.port")

    def _proc_holder(self, local: object, peer: object) -> ports.PortHolder | None:
        """None when the server end is ours; else who holds it."""
        end = ports.server_end(local, peer)
        if end is None:
            raise PeerGone("CLOSED", f"the server end of the connection to port {self.port} is gone")
        if self.adopting:
            return self._stranger_of_uid(end)
        if self._in_our_tree(lambda ours: ports.pid_with_socket({end.inode}, ours) is not None):
            return None
        return ports.socket_holder(end)

    def _stranger_of_uid(self, end: ports.TcpSocket) -> ports.PortHolder | None:
        """None when the socket is our euid's and every process holding it runs as our euid (real and
        effective); else the first holder that does not, or the socket's owner when no holder is visible."""
        euid = os.geteuid()
        holders = ports.pids_with_socket({end.inode})
        for pid in holders:
            if ports.process_uids(pid) != (euid, euid):
                return ports.process_holder(pid, end.uid)
        if end.uid == euid and holders:
            return None
        return ports.socket_holder(end)

    def _lsof_holder(self, local: object, peer: object) -> ports.PortHolder | None:
        holders = ports.lsof_server_ends(local, peer)
        if not holders:
            raise UntrustedPeerError("PEER_UNVERIFIABLE", f"cannot tell which process holds port {self.port} "
                                     "(lsof is missing or cannot see it), so the gateway token was not sent")
        if self.adopting:
            return next((holder for holder in holders if holder.uid != os.geteuid()), None)
        if self._in_our_tree(lambda ours: any(holder.pid in ours for holder in holders)):
            return None
        return holders[0]

    def _in_our_tree(self, holds: Callable[[list[int]], bool]) -> bool:
        """holds(our gateway's pids), asked only while the spawned pid is still the process it was when this
        check was built, and believed only if it still is afterwards (not reaped and reused meanwhile)."""
        return self._spawned_alive() and holds(self._ours()) and self._spawned_alive()

    def _spawned_alive(self) -> bool:
        return self.spawned is not None and self.spawned_start is not None \
            and ports.process_start(self.spawned) == self.spawned_start

    def _ours(self) -> list[int]:
        """The processes whose sockets are our gateway's: the one we spawned and its descendants."""
        return [] if self.spawned is None else [self.spawned, *descendants(self.spawned)]

    def _expected(self) -> str:
        if self.adopting:
            return f"and clawsvc adopts only a gateway run by {ports.describe_uid(os.geteuid())}"
        if self.spawned is None:
            return "and clawsvc has no gateway of its own running"
        if not self._spawned_alive():
            return f"and the gateway clawsvc started (pid {self.spawned}) is gone"
        return f"not by the gateway clawsvc started (pid {self.spawned})"


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
        from clawsvc.service.readiness import readiness_retrying

        retry_on = (RetryableError, PeerGone) if stranger is not None else (RetryableError, TransportError)
        ready = functools.partial(readyz, config.gateway.port)
        retrying = readiness_retrying(cancel, timeout, alive, retry_on, ready)
        started = time.monotonic()
        try:
            for attempt in retrying:
                with attempt:
                    link = next(_links)
                    connection = self._connection(config, token, gen, link, verify_peer)
                    hello = connection.connect()
        except Exception as exc:  # reported, never lost: the loop decides what a failed handshake means
            kind, text = classify(exc)
            timed_out = isinstance(exc, retry_on) and time.monotonic() - started >= timeout
            self._report(cancel, HandshakeFailed(gen, kind, text, timed_out, timeout))
            return
        if cancel.is_set():
            connection.close()
            return
        self.register(link, connection)
        self.post(HandshakeDone(gen, link, hello.server_version, hello.protocol))

    def _report(self, cancel: threading.Event, message: Message) -> None:
        if not cancel.is_set():
            self.post(message)

