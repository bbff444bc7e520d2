"""Spawn, watch and stop the gateway process: own process group, parent-death signal, no orphans.

One GatewayProcess is one spawn. Its waiter thread both starts the child and waits for it, so the
parent-death signal (which Linux ties to the thread that forked) fires only if clawsvc itself dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from clawsvc import ownconfig, trust
from clawsvc.config import NO_RESPAWN, SECRET_ENV, Config
from clawsvc.config.values import TOKEN_ENV
from clawsvc.exits import ExitInfo
from clawsvc.gateway import compile_cache, leftovers, memory, proctree
from clawsvc.gateway.command import FIX, SpawnError, check_command, is_node
from clawsvc.gateway.notices import Notices, exit_cause
from clawsvc.gateway.output import OutputPump
from clawsvc.gateway.spawnenv import GATEWAY_CONFIG, inherited, unconfigured_flag
from clawsvc.logs import register_secret
from clawsvc.threads import start_thread

log = logging.getLogger("clawsvc.gateway.process")

EXTERNAL_SUPERVISOR_ENV = {NO_RESPAWN: "1", "OPENCLAW_SUPERVISOR_MODE": "external",
                           "OPENCLAW_SERVICE_REPAIR_POLICY": "external", "NO_COLOR": "1"}
PORT_ENV = "OPENCLAW_GATEWAY_PORT"
KILL_GRACE = 10.0  # after SIGKILL: only a process stuck in uninterruptible I/O takes longer
PUMP_DRAIN = 1.0  # how long the waiter lets the pumps log the last lines before reporting the exit
HELPER_GRACE = 3.0  # children outside the group (the spawn broker) exit by themselves ~1.6 s after it
ORPHAN_SCAN = 1.0  # how often the waiter looks for processes the gateway orphaned to us (the subreaper)
SWEEP_BOUND = proctree.SWEEP_ROUNDS * (HELPER_GRACE + proctree.KILL_WAIT)  # Orphans.sweep's worst case
MARGIN = 5.0
STOP_OVERHEAD = KILL_GRACE + SWEEP_BOUND + HELPER_GRACE + proctree.KILL_WAIT + MARGIN  # stop() past stop_timeout


# The units' TimeoutStopSec= (and launchd's ExitTimeOut): systemd SIGKILLs clawsvc after it. The gateway reads
# it too (from its cgroup's unit) and drains for at most min(315 s, it - 15 s), so 390 s leaves it its full
# policy (330 s, gateway.stop_timeout's default) and clawsvc the time to end what is left (stop_bound).
UNIT_STOP_TIMEOUT = 390.0


def stop_bound(config: Config) -> float:
    """The longest GatewayProcess.stop() takes: SIGTERM grace, SIGKILL, the sweep, the last stragglers."""
    return config.gateway.stop_timeout + STOP_OVERHEAD


def stop_problem(config: Config) -> str | None:
    """Why the units cannot honour gateway.stop_timeout (systemd would SIGKILL clawsvc mid-stop), or None."""
    if stop_bound(config) <= UNIT_STOP_TIMEOUT:
        return None
    return (f"gateway.stop_timeout {config.gateway.stop_timeout:g}s is more than the units allow: clawsvc needs up "
            f"to {STOP_OVERHEAD:g}s after it to end the gateway's helpers, within "
            f"TimeoutStopSec={UNIT_STOP_TIMEOUT:g}s; use at most {UNIT_STOP_TIMEOUT - STOP_OVERHEAD:g}s")


def state_dir(config: Config) -> Path:
    return config.gateway.state_dir.absolute()  # also the gateway's cwd: a relative path would nest


def build_argv(config: Config) -> list[str]:
    gw = config.gateway
    return [*gw.command, "gateway", "run", "--port", str(gw.port), "--bind", gw.bind, "--auth", "token",
            *unconfigured_flag(str(state_dir(config)))]


def build_env(config: Config, token: str, provider_env: Mapping[str, str],
              base: Mapping[str, str] = os.environ) -> dict[str, str]:
    env = inherited(base)
    env.update(provider_env)
    env.update(EXTERNAL_SUPERVISOR_ENV)
    env["OPENCLAW_STATE_DIR"] = str(state_dir(config))
    env["OPENCLAW_CONFIG_PATH"] = str(state_dir(config) / GATEWAY_CONFIG)
    env[PORT_ENV] = str(config.gateway.port)  # the gateway's own CLI finds it there (its argv has --port)
    compile_cache.set_env(config, env)
    for key, value in config.gateway.env.items():
        if key != TOKEN_ENV:
            env[key] = value
            if SECRET_ENV.search(key):
                register_secret(value)
    compile_cache.keep_gateway_unwrapped(env)
    env[TOKEN_ENV] = token
    return env


def prepare_state_dir(config: Config) -> None:
    """Create gateway.state_dir 0700 (see trust.open_private_dir), one we cannot trust refused, with the gateway's
    minimal openclaw.json in it when it has none (clawsvc.ownconfig)."""
    path = state_dir(config)
    try:
        fd = trust.open_private_dir(path, "gateway.state_dir")
    except trust.TrustError as exc:
        raise SpawnError(str(exc)) from None
    except OSError as exc:
        raise SpawnError(f"cannot create gateway.state_dir {path}: {exc.strerror}; create it (mode 0700) "
                         "for the user clawsvc runs as") from None
    try:
        if ownconfig.ensure_minimal(fd):
            log.info("wrote the gateway's own config %s (gateway.mode local; its token is the one clawsvc hands "
                     "it, through %s)", path / GATEWAY_CONFIG, TOKEN_ENV)
    except OSError as exc:
        raise SpawnError(f"cannot write {path / GATEWAY_CONFIG}: {exc.strerror}; give gateway.state_dir to the "
                         "user clawsvc runs as") from None
    finally:
        os.close(fd)


def prepare_compile_cache(config: Config, env: dict[str, str]) -> None:
    """compile_cache.prepare, refusing a directory we cannot trust like prepare_state_dir does."""
    try:
        compile_cache.prepare(config, env)
    except trust.TrustError as exc:
        raise SpawnError(str(exc)) from None


def _pdeathsig_prefix() -> list[str]:
    """setpriv (util-linux) sets PR_SET_PDEATHSIG and execs: the gateway keeps its own PID."""
    if sys.platform.startswith("linux") and (setpriv := shutil.which("setpriv")):
        return [setpriv, "--pdeathsig", "KILL", "--"]
    return []


class GatewayProcess:
    """One gateway child: start() once, stop() from any thread any number of times."""

    def __init__(self, config: Config, token: str, provider_env: Mapping[str, str],
                 on_exit: Callable[[ExitInfo], None], on_drain: Callable[[str], None] | None = None) -> None:
        """`on_drain` hears what a drain still waits for, from the gateway's own log (gateway.notices)."""
        self.config = config
        self._token = token
        self._provider_env = dict(provider_env)
        self._on_exit = on_exit
        self.notices = Notices(on_drain)
        self._lock = threading.Lock()  # guards the fields below and every signal sent to the pid
        self._stop_lock = threading.Lock()  # one stopper at a time; later ones get the same result
        self._started = self._stop_requested = self._reaped = self._forced = False
        self._popen: subprocess.Popen[bytes] | None = None
        self._spawn_error: SpawnError | None = None
        self._info = ExitInfo(None, None)
        self._spawned = threading.Event()
        self._gone = threading.Event()  # the gateway's main process is reaped
        self._exited = threading.Event()  # ... and what it left behind too; on_exit comes next
        self._marker = secrets.token_hex(16)  # CLAWSVC_GATEWAY_ID: marks this gateway's processes
        register_secret(token)

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def running(self) -> bool:
        return self._popen is not None and not self._gone.is_set()

    def start(self) -> int:
        """Spawn the gateway; returns its pid."""
        with self._lock:
            if self._started:
                raise RuntimeError("GatewayProcess.start() called twice; make a new GatewayProcess")
            self._started = True
        try:
            env = build_env(self.config, self._token, self._provider_env)
            env[proctree.GATEWAY_ID_ENV] = self._marker
            prepare_state_dir(self.config)  # first: its openclaw.json decides build_argv's --allow-unconfigured
            argv = check_command(build_argv(self.config), env)
            argv, heap = memory.with_heap_limit(argv, env, is_node(argv[0]))
            if heap is not None:
                log.debug("gateway V8 heap limit: %s", heap)
            prepare_compile_cache(self.config, env)
            if killed := leftovers.kill_leftovers(state_dir(self.config)):
                log.warning("killed %d process(es) left over from an earlier gateway of %s (pids %s); their "
                            "clawsvc must have been killed without a chance to stop them",
                            len(killed), state_dir(self.config), ", ".join(map(str, killed)))
            with self._lock:
                if self._stop_requested:
                    raise SpawnError("gateway start cancelled: stop was requested first")
        except SpawnError as exc:
            self._spawn_error = exc
            self._spawned.set()
            raise
        start_thread("waiter", self._spawn_and_wait, _pdeathsig_prefix() + argv, env)
        self._spawned.wait()
        if self._spawn_error is not None:
            raise self._spawn_error
        assert self._popen is not None
        log.info("started gateway pid %d: %s", self._popen.pid, shlex.join(argv))
        return self._popen.pid

    def _spawn_and_wait(self, argv: list[str], env: dict[str, str]) -> None:
        try:
            popen = subprocess.Popen(
                argv, env=env, cwd=state_dir(self.config), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self._spawn_error = SpawnError(f"cannot start gateway command {argv[0]}: {exc.strerror}; {FIX}")
            self._spawned.set()
            return
        assert popen.stdout is not None and popen.stderr is not None
        pumps = [OutputPump(popen.stdout, "stdout", self.config.logging, self.notices.see),
                 OutputPump(popen.stderr, "stderr", self.config.logging, self.notices.see)]
        for pump in pumps:
            pump.start()
        self._popen = popen
        self._write_pidfile(popen.pid)
        self._spawned.set()
        orphans = proctree.Orphans(popen.pid, self._marker)
        self._wait_unreaped(popen, orphans)
        with self._lock:
            self._signal_group(signal.SIGKILL)  # whatever of its group outlived it has no parent to serve
            returncode = popen.wait()
            self._reaped = True
        # the exit is reported first, so that no respawn waits for the old helpers; stop() waits for them
        with leftovers.sweeping(self._marker):  # ours to end, not "left over by a killed clawsvc"
            self._gone.set()
            for pump in pumps:
                pump.join(PUMP_DRAIN)
            self._info = ExitInfo.from_returncode(returncode, self._forced, exit_cause(self.notices.tail()))
            try:
                self._on_exit(self._info)
            except Exception:
                log.exception("on_exit callback failed for gateway pid %d", popen.pid)
            self._end_orphans(popen.pid, orphans)
        self._exited.set()

    def _write_pidfile(self, pid: int) -> None:
        """Record this gateway in the state dir, so a later clawsvc can prove what it left behind is ours."""
        record = leftovers.PidRecord.of(pid, self._marker)
        try:
            if record is not None:
                leftovers.write_pidfile(state_dir(self.config), record)
        except OSError as exc:
            log.warning("cannot write %s: %s; if clawsvc is killed, what the gateway leaves running will not "
                        "be cleaned up at the next start", state_dir(self.config) / leftovers.PIDFILE, exc.strerror)

    def _end_orphans(self, pid: int, orphans: proctree.Orphans) -> None:
        """End and reap what the exited gateway left behind; the pidfile goes once nothing is left."""
        try:
            if orphans.sweep(HELPER_GRACE) == 0:
                leftovers.remove_pidfile(state_dir(self.config), self._marker)
        except Exception:  # stop() waits for what follows: never let this end the waiter
            log.exception("cleaning up after gateway pid %d failed", pid)
        finally:
            orphans.close()

    @staticmethod
    def _wait_unreaped(popen: subprocess.Popen[bytes], orphans: proctree.Orphans) -> None:
        """Wait for the gateway to exit without reaping it: until reaped, its zombie keeps the pid (= its group's
        id) ours. Meanwhile adopt and reap what its processes orphan."""
        fd = proctree.pidfd(popen.pid)
        if fd is not None:
            try:
                orphans.watch(fd, ORPHAN_SCAN)
                return
            except Exception:  # the exit must still be seen and reported, or the supervisor waits forever
                log.exception("watching gateway pid %d for orphaned helpers failed; now only waiting for its "
                              "exit (its helpers are still ended after it)", popen.pid)
            finally:
                os.close(fd)
        if hasattr(os, "waitid"):
            with contextlib.suppress(ChildProcessError):
                os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)
        else:  # macOS has no waitid: reap first (the group id stays reserved while the group has members)
            popen.wait()

    def _signal_group(self, sig: int) -> None:
        """Caller holds self._lock; the unreaped pid is also the group id, so it cannot name a stranger."""
        if self._popen is not None and not self._reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, sig)

    def send_signal(self, sig: int) -> None:
        """Signal the gateway's main process only (e.g. SIGUSR2 = in-process restart); no-op once exited."""
        with self._lock:
            if self._popen is not None and not self._reaped:
                os.kill(self._popen.pid, sig)  # not Popen.send_signal: its poll() could reap behind the waiter

    def stop(self, timeout: float | None = None) -> ExitInfo:
        """SIGTERM the main process (the gateway drains its work and stops its own children), wait `timeout`
        (gateway.stop_timeout), then SIGKILL the group; always reaped."""
        grace = self.config.gateway.stop_timeout if timeout is None else timeout
        with self._lock:
            self._stop_requested = True
            if not self._started:
                return self._info
        self._spawned.wait()
        if self._popen is None:
            return self._info
        with self._stop_lock:
            if not self._exited.is_set() and not self._terminate(self._popen.pid, grace):
                return ExitInfo(None, None, forced=True)
        return self._info

    def _terminate(self, pid: int, grace: float) -> bool:
        """False when the process is still there after SIGKILL."""
        with self._lock:  # until reaped, the pid is still ours: its descendants are the gateway's
            family = {} if self._reaped else proctree.pin_descendants(pid)
            if not self._reaped:
                os.kill(pid, signal.SIGTERM)
        if not self._gone.is_set():
            log.info("stopping gateway pid %d: sent SIGTERM; it finishes its active work first (SIGKILL of its "
                     "process group in %gs if it is still running)", pid, grace)
        if not self._gone.wait(grace):
            log.warning("gateway pid %d did not stop within %gs; sending SIGKILL to its process group", pid, grace)
            with self._lock:
                self._forced = True
                self._signal_group(signal.SIGKILL)
            if not self._gone.wait(KILL_GRACE):
                log.error("gateway pid %d survived SIGKILL for %gs (stuck in the kernel?)", pid, KILL_GRACE)
                proctree.kill_stragglers(family, 0)
                return False
        if not self._exited.wait(SWEEP_BOUND + MARGIN):  # the waiter ends what the gateway orphaned to us
            log.error("gateway pid %d exited, but ending the helpers it left took over %gs; giving up on them",
                      pid, SWEEP_BOUND + MARGIN)
        proctree.kill_stragglers(family, HELPER_GRACE)
        return True
