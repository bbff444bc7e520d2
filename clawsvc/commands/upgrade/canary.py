"""The upgrade's canary: one start of a new openclaw version beside the running one, until its hello-ok.

It runs as the service's gateway would (the same env from the same config, the service's compile cache, so it
warms it), but on a free loopback port, with a throwaway token and a scratch state dir that starts as a copy of
the service's state (canary_state), so a version that would refuse or break that state fails here, before any
switch; before it starts, the new version's own database preflight judges the copy (upgrade/openclaw.py). The
copied state must not make it work for real: it runs in the gateway's quiet, offline mode (openclaw.CANARY_ENV: no
channels, providers, cron jobs ...) and every secret-looking variable it would inherit (provider API keys) is
emptied. It is always stopped, and its scratch dir removed: on success, failure, timeout and Ctrl-C.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import pwd
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from clawsvc import trust, users
from clawsvc.commands.upgrade import openclaw
from clawsvc.commands.upgrade.copy_as import copy_state_as
from clawsvc.commands.upgrade.statecopy import Copied, copy_state
from clawsvc.config import SECRET_ENV, Config
from clawsvc.config.values import TOKEN_ENV
from clawsvc.exits import ExitInfo
from clawsvc.gateway import process
from clawsvc.gateway.command import vet_command
from clawsvc.gateway.compile_cache import compile_cache_dir
from clawsvc.gateway.connection import GatewayConnection
from clawsvc.gateway.peercheck import PeerCheck
from clawsvc.gateway.process import GatewayProcess, SpawnError
from clawsvc.gateway.protocol import GatewayError, describe_error
from clawsvc.gateway.readiness import connect_when_up
from clawsvc.gateway.spawnenv import GATEWAY_CONFIG, STRIP_ENV

LOG_LINES = 20
SCRATCH_PREFIX = "clawsvc-canary-"
GATEWAY_LOGGER = "clawsvc.gateway"  # where OutputPump logs the gateway's (redacted) lines


class CanaryFailed(Exception):
    """The new version did not answer; str() is one line, `lines` its last log lines (redacted); `newer_state`
    when it refused a state a newer release migrated."""

    def __init__(self, reason: str, lines: list[str], newer_state: bool = False) -> None:
        super().__init__(reason)
        self.lines = lines
        self.newer_state = newer_state or openclaw.newer_state(lines)


@dataclasses.dataclass(frozen=True)
class RunAs:
    """The account the canary runs as: the service's, so what it writes in the compile cache is the service's."""
    uid: int
    gid: int
    name: str

    def command(self, command: tuple[str, ...]) -> tuple[str, ...]:
        setpriv = shutil.which("setpriv") or "setpriv"
        # --pdeathsig again: changing uid clears the one the outer setpriv (GatewayProcess) set
        return (setpriv, "--reuid", str(self.uid), "--regid", str(self.gid), "--init-groups",
                "--pdeathsig", "KILL", "--", *command)


def service_account(config: Config) -> RunAs | None:
    """As root, when gateway.state_dir belongs to the service user (a system service): that user; else None."""
    if os.geteuid() != 0 or (uid := users.service_uid()) is None:
        return None
    try:
        owner = process.state_dir(config).stat().st_uid
    except OSError:
        return None
    return RunAs(uid, pwd.getpwuid(uid).pw_gid, users.SERVICE_USER) if owner == uid else None


def warmed_cache(config: Config, run_as: RunAs | None) -> Path | None:
    """The service's compile cache dir, which the canary's env names as the service's does (process.build_env),
    so the canary warms it. Run as the service user, a cache dir that does not exist yet is left alone (root
    would create it for root): None, and the canary runs without one."""
    path = compile_cache_dir(config)
    if path is None or (run_as is not None and not path.is_dir()):
        return None
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Tail(logging.Handler):
    """The last gateway lines the canary printed (OutputPump has redacted them already)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=LOG_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _captured() -> Iterator[_Tail]:
    logger = logging.getLogger(GATEWAY_LOGGER)
    tail, saved = _Tail(), (logger.level, logger.propagate)
    logger.addHandler(tail)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield tail
    finally:
        logger.removeHandler(tail)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """A private (0700) dir holding the canary's state dir, HOME and TMPDIR, ours until _hand_to; removed after."""
    root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    try:
        for path in (root / "state", root / "home", root / "tmp"):
            path.mkdir(mode=0o700)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _copy_state(source: Path, scratch: Path, run_as: RunAs | None, report: Callable[[str], None]) -> Copied:
    """The service's state into scratch/state, copied by the canary's account when that is not us (canary_copy:
    root would read whatever that account swaps a dir of the live state for). That account gets scratch/state to
    write the copy in and may pass through scratch (0711) to it; the rest stays ours until _hand_to."""
    if run_as is None:
        return copy_state(source, scratch / "state", warn=report)
    os.lchown(scratch / "state", run_as.uid, run_as.gid)
    os.chmod(scratch, 0o711)
    return copy_state_as(run_as.uid, run_as.gid, source, scratch / "state", warn=report)


def _hand_to(root: Path, run_as: RunAs | None) -> None:
    """Give the scratch dirs to the canary's account once the copy is in: while root copies, that account (the
    one a compromised gateway runs as) cannot reach in to swap a dir for a symlink root would write through."""
    if run_as is not None:
        os.chmod(root, 0o700)
        for path in (root / "state", root / "home", root / "tmp", root):
            os.lchown(path, run_as.uid, run_as.gid)


def canary_config(config: Config, command: tuple[str, ...], scratch: Path, port: int,
                  run_as: RunAs | None) -> Config:
    """The service's config with the canary's command, port, scratch dirs, quiet env and no secrets; everything
    else (its other env, compile cache, timeouts) as the service's gateway gets it."""
    gw = config.gateway
    emptied = {key: "" for key in (*os.environ, *gw.env) if SECRET_ENV.search(key) and key != TOKEN_ENV
               and key not in STRIP_ENV}
    # gateway.env wins over the state paths clawsvc sets: its own ones would start the canary on the live state
    home, state = str(scratch / "home"), scratch / "state"
    env = {**gw.env, **emptied, **openclaw.CANARY_ENV, "HOME": home, "OPENCLAW_HOME": home,
           "TMPDIR": str(scratch / "tmp"), "OPENCLAW_STATE_DIR": str(state),
           "OPENCLAW_CONFIG_PATH": str(state / GATEWAY_CONFIG)}
    command = run_as.command(command) if run_as is not None else command
    return dataclasses.replace(config, gateway=dataclasses.replace(
        gw, command=command, port=port, state_dir=state, env=env, adopt_existing=False,
        compile_cache=warmed_cache(config, run_as)))


def _cli_env(canary: Config) -> dict[str, str]:
    """The canary's environment for its CLI: the gateway's, without a token (the CLI needs none)."""
    env = process.build_env(canary, "", {})
    env.pop(TOKEN_ENV, None)
    return env


def run_canary(config: Config, command: tuple[str, ...], report: Callable[[str], None] = lambda _line: None) -> float:
    """Copy the service's state, start `command` (a version's node + entry) on it like the service would, wait
    for a real hello-ok, stop it. Returns seconds from spawn to hello-ok; CanaryFailed when it never answered
    within gateway.start_timeout, canary_state.StateCopyError when the state cannot be copied."""
    run_as = service_account(config)
    judged = trust.judged_as_the_service() if run_as is not None else contextlib.nullcontext()
    with _captured() as tail, _scratch() as scratch, judged:
        try:  # as every start is: judged before it runs, examined as no one above the files' owners
            vet_command(command, process.build_env(config, "", {}))
        except SpawnError as exc:
            raise CanaryFailed(str(exc), []) from None
        source = process.state_dir(config)
        copied = _copy_state(source, scratch, run_as, report)
        _hand_to(scratch, run_as)
        report(f"canary: copied the service's state {source} ({copied.files} files, {copied.databases} "
               f"database(s), {copied.bytes / 1024 ** 2:.1f} MiB) to a scratch dir")
        canary = canary_config(config, command, scratch, free_port(), run_as)
        if refused := openclaw.preflight(canary.gateway.command, scratch / "state", _cli_env(canary)):
            raise CanaryFailed(f"its database preflight: {refused.text}", [], refused.incompatible)
        report("canary: its database preflight accepts the copied state")
        exited, token = threading.Event(), secrets.token_urlsafe(32)  # throwaway: never the service's
        gateway = GatewayProcess(canary, token, {}, lambda _info: exited.set())
        try:
            return _answered(canary, gateway, token, exited, tail)
        finally:
            gateway.stop()


def _answered(canary: Config, gateway: GatewayProcess, token: str, exited: threading.Event, tail: _Tail) -> float:
    started = time.monotonic()
    try:
        pid = gateway.start()
    except SpawnError as exc:
        raise CanaryFailed(str(exc), list(tail.lines)) from None
    timeout = canary.gateway.start_timeout

    def connect() -> GatewayConnection:
        link = GatewayConnection.from_config(canary, token, verify_peer=PeerCheck(canary.gateway.port, False, pid))
        link.connect()
        return link

    try:
        connect_when_up(connect, canary.gateway.port, threading.Event(), timeout, lambda: not exited.is_set()).close()
        return time.monotonic() - started
    except GatewayError as exc:
        reason = _why(exc, exited, gateway, timeout)
    raise CanaryFailed(reason, list(tail.lines))


def _why(exc: GatewayError, exited: threading.Event, gateway: GatewayProcess, timeout: float) -> str:
    if exited.is_set():
        info: ExitInfo = gateway.stop()
        return f"it {info.describe()} before answering"
    return f"no hello-ok within {timeout:g}s (gateway.start_timeout): {describe_error(exc)}"
