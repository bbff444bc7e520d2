"""The start plan's early gateway: fork + exec exactly as GatewayProcess's Popen would, before clawsvc has loaded
anything else, and what `clawsvc run` then does with it: adopt it (it is the config's gateway) or discard it.
Imports only what the interpreter has loaded already, apart from built-in modules."""

from __future__ import annotations

import _signal
import os

TYPE_CHECKING = False  # typing itself is not loaded on the start plan's path
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import FrameType

DEADLY = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT)  # until `run` handles them: see _guard
UNSETTLED: set[int] = set()  # early gateways neither adopted nor discarded yet


class ForkedChild:
    """An early gateway as GatewayProcess watches its children (the part of subprocess.Popen it uses)."""

    def __init__(self, pid: int, stdout_fd: int, stderr_fd: int) -> None:
        self.pid = pid
        self.stdout = os.fdopen(stdout_fd, "rb")
        self.stderr = os.fdopen(stderr_fd, "rb")
        self.returncode: int | None = None

    def wait(self) -> int:
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                self.returncode = 0  # reaped elsewhere; as Popen.wait() says then
        return self.returncode


def spawn(argv: list[str], env: dict[str, str], cwd: str) -> ForkedChild | None:
    """fork + exec as GatewayProcess's Popen does: own session, stdin /dev/null, stdout and stderr piped, no
    other descriptor, SIGPIPE and SIGXFSZ back to their defaults (restore_signals)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    fail_r, fail_w = os.pipe()
    open_max = max(os.sysconf("SC_OPEN_MAX"), fail_w + 1)
    _guard()
    mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, DEADLY)  # none may come between the fork and UNSETTLED.add
    pid = os.fork()
    if pid == 0:  # the child: only os calls until exec, and never back into clawsvc
        try:
            for signum in (_signal.SIGPIPE, _signal.SIGXFSZ, *DEADLY):
                _signal.signal(signum, _signal.SIG_DFL)
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            os.setsid()
            os.chdir(cwd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.closerange(3, fail_w)
            os.closerange(fail_w + 1, open_max)
            os.execve(argv[0], argv, env)
        except BaseException:
            os.write(fail_w, b"x")
        finally:
            os._exit(127)
    UNSETTLED.add(pid)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
    for fd in (out_w, err_w, fail_w):
        os.close(fd)
    failed = os.read(fail_r, 1)  # empty at exec: the pipe is close-on-exec
    os.close(fail_r)
    if failed:
        os.waitpid(pid, 0)
        _settle(pid)
        os.close(out_r)
        os.close(err_r)
        return None
    return ForkedChild(pid, out_r, err_r)


_saved: dict[int, object] = {}


def _guard() -> None:
    """Until `clawsvc run` handles signals itself, one that would end clawsvc kills the early gateway first
    (the parent-death signal needs setpriv, which a system may lack), then ends clawsvc as it would have."""
    for signum in DEADLY:
        handler = _signal.getsignal(signum)
        if handler in (_signal.SIG_DFL, _signal.default_int_handler):
            _saved[signum] = handler
            _signal.signal(signum, _die_with)


def _die_with(signum: int, frame: FrameType | None) -> None:
    for pid in UNSETTLED:
        try:
            os.killpg(pid, _signal.SIGKILL)
        except OSError:  # gone already
            continue
    _signal.signal(signum, _signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _settle(pid: int) -> None:
    """`pid` is adopted or gone: once no early gateway is left, the handlers _guard replaced come back."""
    UNSETTLED.discard(pid)
    if UNSETTLED:
        return
    for signum, handler in _saved.items():
        if _signal.getsignal(signum) is _die_with:
            _signal.signal(signum, handler)  # type: ignore[arg-type]
    _saved.clear()


class EarlyGateway:
    """A gateway exec'd from the plan, waiting for `clawsvc run` to compare it with the config's and adopt it."""

    def __init__(self, child: ForkedChild, argv: list[str], env: dict[str, str], cwd: str, marker: str) -> None:
        self.child = child
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.marker = marker
        self.settled = False  # adopted or discarded

    @property
    def pid(self) -> int:
        return self.child.pid

    def differences(self, argv: Sequence[str], env: Mapping[str, str], cwd: str) -> list[str]:
        """What differs from the gateway the config asks for, by name only (no value can be a secret here)."""
        found = [] if list(argv) == self.argv else ["argv"]
        if cwd != self.cwd:
            found.append("cwd")
        names = sorted(name for name in {*env, *self.env} if env.get(name) != self.env.get(name))
        found.extend(f"${name}" for name in names)
        return found

    def adopt(self) -> ForkedChild:
        self.settled = True
        _settle(self.pid)
        return self.child

    def discard(self) -> None:
        """Kill and reap it (and close its pipes): nothing will supervise it. A no-op once adopted."""
        if self.settled:
            return
        import contextlib
        import signal

        self.settled = True
        with contextlib.suppress(OSError):
            os.killpg(self.child.pid, signal.SIGKILL)
        self.child.wait()
        _settle(self.pid)
        self.child.stdout.close()
        self.child.stderr.close()
