"""control.socket on disk: its directory trusted or created private, a stale socket replaced (a live one never
stolen), the socket born with its final mode and group, and removed at close only if it is still ours."""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
from pathlib import Path

from clawsvc import trust
from clawsvc.control.wire import peer_of

log = logging.getLogger("clawsvc.control.server")

DIR_WHAT = "control socket directory"


class ControlSocketError(Exception):
    """The server cannot take its socket path (in use by a live clawsvc, not a socket, bad group, ...)."""


def group_id(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ControlSocketError(f"control.group: no group named {group!r} on this system") from None


class SocketFile:
    def __init__(self, path: Path, group: str | None, gid: int | None) -> None:
        self.path = path
        self.group = group
        self.gid = gid
        self._identity: tuple[int, int] | None = None

    def bind(self) -> socket.socket:
        """A listening socket at the path; ControlSocketError (one line) when the path cannot be ours."""
        self._prepare_dir()
        self._claim()
        return self._bind()

    def remove(self) -> None:
        """Unlink the socket file if it is still the one we bound (not one a successor put there)."""
        try:
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink()
        except OSError:
            pass

    def _chgrp_error(self, path: Path, exc: OSError) -> ControlSocketError:
        return ControlSocketError(f"cannot give group {self.group} access to {path}: {exc.strerror} "
                                  f"(clawsvc's user must be a member of {self.group})")

    def _prepare_dir(self) -> None:
        """An existing directory must be root's or ours and writable by nobody else (another user may have
        made /tmp/clawsvc-UID first); it is not re-permissioned (systemd's RuntimeDirectory=, 0755, passes).
        A missing one is created 0700, or 0750 with control.group's group."""
        parent = self.path.parent
        try:
            if trust.check_dir(parent, DIR_WHAT) is not None:
                self._warn_if_group_cannot_reach(parent)
                return
            fd = trust.open_private_dir(parent, DIR_WHAT)
        except trust.TrustError as exc:
            raise ControlSocketError(str(exc)) from None
        except OSError as exc:
            raise ControlSocketError(f"cannot create the {DIR_WHAT} {parent}: {exc.strerror or exc}") from None
        try:
            self._set_dir_access(fd, parent)
        finally:
            os.close(fd)

    def _set_dir_access(self, fd: int, parent: Path) -> None:
        if self.gid is None:
            return
        try:
            os.fchmod(fd, 0o750)
        except OSError as exc:
            raise ControlSocketError(f"cannot chmod the {DIR_WHAT} {parent}: {exc.strerror}") from None
        try:
            if os.fstat(fd).st_gid != self.gid:  # see _bind
                os.fchown(fd, -1, self.gid)
        except OSError as exc:
            raise self._chgrp_error(parent, exc) from None

    def _warn_if_group_cannot_reach(self, parent: Path) -> None:
        mode = parent.stat().st_mode
        if self.gid is not None and not mode & (stat.S_IXGRP | stat.S_IXOTH):
            log.warning("control.group %s cannot reach %s: its directory %s is mode %o", self.group, self.path,
                        parent, stat.S_IMODE(mode))

    def _claim(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{self.path} exists and is not a socket; move it away or set control.socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            try:
                probe.connect(str(self.path))
            except ConnectionRefusedError:
                log.info("removing stale control socket %s left by a previous run", self.path)
                self.path.unlink(missing_ok=True)
                return
            except OSError as exc:
                raise ControlSocketError(f"cannot tell whether {self.path} is in use: "
                                         f"{exc.strerror or 'no answer'}") from None
            peer = peer_of(probe)
        who = f" (pid {peer.pid})" if peer else ""
        raise ControlSocketError(f"another clawsvc is serving {self.path}{who}; stop it or set control.socket")

    def _bind(self) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._bind_with_mode(listener)
            st = self.path.lstat()
            self._identity = (st.st_dev, st.st_ino)
        except OSError as exc:
            listener.close()
            raise ControlSocketError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        try:
            # chown only when needed: the unit's seccomp filter refuses it (@privileged), and control.group is
            # usually the service's own group (clawsvc), which the socket has from birth
            if self.gid is not None and st.st_gid != self.gid:
                try:
                    os.chown(self.path, -1, self.gid, follow_symlinks=False)
                except OSError as exc:
                    raise self._chgrp_error(self.path, exc) from None
            listener.listen(128)
        except (OSError, ControlSocketError) as exc:
            listener.close()
            self.remove()
            if isinstance(exc, ControlSocketError):
                raise
            raise ControlSocketError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        return listener

    def _bind_with_mode(self, listener: socket.socket) -> None:
        """bind() under a umask that gives the socket its final mode, so no chmod (which would follow a symlink
        swapped in meanwhile) is needed. The umask is process-wide: a file another thread creates during this
        bind() gets 0117/0177 instead of the usual umask. That can only happen at start and at a reload, for a
        few microseconds, and clawsvc creates its own files with explicit 0600 modes."""
        mode = 0o660 if self.gid is not None else 0o600
        previous = os.umask(0o777 & ~mode)
        try:
            listener.bind(str(self.path))
        finally:
            os.umask(previous)
