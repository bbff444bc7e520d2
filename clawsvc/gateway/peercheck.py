"""Who may receive the gateway token: the server end of the very connection about to carry it must be held by the
gateway clawsvc spawned (or, adopting, by a process of clawsvc's own uid). GatewayConnection calls a PeerCheck
before it sends the connect frame."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from clawsvc.gateway import ports
from clawsvc.gateway.proctree import descendants
from clawsvc.gateway.protocol import TransportError, UntrustedPeerError, describe_error


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
