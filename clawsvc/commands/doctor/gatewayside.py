"""Doctor's checks of what the gateway side holds against the service, and `doctor --fix`: the gateway's own
openclaw.json (does it take clawsvc's token?), the running service's own account of a gateway it cannot reach,
and systemd having refused a start; the fix gives the state dir back to the service's user and points
openclaw.json back at clawsvc's token through the gateway's own CLI (as that user)."""

from __future__ import annotations

import argparse
import os
import pwd
import threading
import time
from typing import TextIO

from clawsvc import exitcodes, ownconfig, trust
from clawsvc.boundedrun import Account, Unfinished, run_bounded
from clawsvc.commands.control.client import client_socket
from clawsvc.commands.doctor.findings import Finding, Level
from clawsvc.commands.runtime import gatewaycli
from clawsvc.commands.servicectl import start_refused
from clawsvc.config import REJECTS, Config, ConfigError, load_config
from clawsvc.control.client import request
from clawsvc.control.wire import ControlError
from clawsvc.gateway import statefiles
from clawsvc.gateway.command import SpawnError
from clawsvc.gateway.process import state_dir
from clawsvc.secrets import SecretError
from clawsvc.service.status import BadSnapshot, Snapshot, State
from clawsvc.text import cut
from clawsvc.users import user_name

STATUS_TIMEOUT = 3.0
FIX_TIMEOUT = 180.0  # the gateway's CLI: ~7 s here, cold and loaded much more
FIX_CAP = 256 * 1024
_LEVELS = {ownconfig.Level.OK: Level.OK, ownconfig.Level.WARN: Level.WARN, ownconfig.Level.FAIL: Level.FAIL}


def _owner(config: Config) -> Account | None:
    """The state dir's owner when root must not read its files itself, else None (we read them, or cannot)."""
    try:
        st = os.stat(state_dir(config))
    except OSError:
        return None
    if os.geteuid() != 0 or st.st_uid == 0:
        return None
    return Account(st.st_uid, st.st_gid)


def check_own_config(config: Config) -> list[Finding]:
    verdict = ownconfig.judge_as(_owner(config), state_dir(config))
    return [Finding(_LEVELS[verdict.level], "openclaw.json", verdict.text)]


def check_service(status: Snapshot | None) -> list[Finding]:
    """What the running service says when its gateway is not running for it (a rejected token names its fix)."""
    if status is None or status.state is State.RUNNING or not status.cause:
        return []
    level = Level.FAIL if REJECTS in status.cause else Level.WARN
    return [Finding(level, "service", f"{status.state.value}: {status.cause}")]


def check_start_limit(unit: str) -> list[Finding]:
    refused = start_refused(unit)
    return [Finding(Level.FAIL, "units", refused)] if refused else []


# ---------------------------------------------------------------- doctor --fix

def _give_back(config: Config, out: TextIO) -> None:
    """Everything in the state dir to the user the service runs as (as check-config judges it: the owner its
    `state dir files` step wants)."""
    path = state_dir(config)
    if os.geteuid() != 0:
        print("skip   state dir: giving files back to the service's user needs root (sudo clawsvc doctor --fix)",
              file=out)
        return
    with trust.judged_as_the_service():
        uid = max(trust.trusted_uids())
        try:
            resolved = trust.check_dir(path, "gateway.state_dir", root_links_only=True)
            if resolved is None:
                print(f"skip   state dir: {path} does not exist yet", file=out)
                return
            fixed = statefiles.give_back(resolved, uid, pwd.getpwuid(uid).pw_gid)
        except trust.TrustError as exc:
            print(f"FAIL   state dir: {exc}", file=out)
            return
        except OSError as exc:  # ELOOP, ENOTDIR: a link appeared on the way since it was checked
            print(f"FAIL   state dir {path}: {exc.strerror or exc}; stopped there (no link is followed as root)",
                  file=out)
            return
    for changed in fixed.changed:
        print(f"fixed  {changed}: now owned by {user_name(uid)}", file=out)
    for left, why in fixed.left:
        print(f"left   {left}: {why}; check it, then remove it or chown it yourself", file=out)


def _point_back(args: argparse.Namespace, config: Config, out: TextIO) -> None:
    verdict = ownconfig.judge_as(_owner(config), state_dir(config))
    if verdict.level is ownconfig.Level.OK:
        return
    fix = argparse.Namespace(config=args.config, instance=getattr(args, "instance", None),
                             args=list(ownconfig.FIX_ARGS))
    try:
        argv, env, _cwd, _alone_as = gatewaycli.command(fix)
        done = run_bounded(argv, env=env, timeout=FIX_TIMEOUT, cap=FIX_CAP)
    except (ConfigError, SpawnError, SecretError, gatewaycli.CannotRun, Unfinished) as exc:
        print(f"FAIL   openclaw.json: cannot run the gateway's CLI to fix it: {exc}", file=out)
        return
    if done.returncode != 0:
        said = done.output.decode("utf-8", "replace").strip().splitlines()
        print(f"FAIL   openclaw.json: `openclaw {' '.join(ownconfig.FIX_ARGS[:3])} ...` exited {done.returncode}: "
              f"{cut(said[-1], 300) if said else 'nothing said'}", file=out)
        return
    print(f"fixed  {state_dir(config) / 'openclaw.json'}: gateway.mode local, gateway.auth.token from clawsvc "
          f"(the gateway applies it at once)", file=out)
    _wait_reachable(config, out)


def _locked_out(config: Config) -> bool:
    """Whether the running service says its gateway rejects its token."""
    try:
        reply = request(client_socket(config.control.socket), {"cmd": "status"}, STATUS_TIMEOUT)
        return REJECTS in str(Snapshot.from_dict(reply).cause or "")
    except (ControlError, BadSnapshot):
        return False


def _wait_reachable(config: Config, out: TextIO) -> None:
    """A service that says its gateway rejects its token asks again every reconnect.max_delay: wait for that."""
    if not _locked_out(config):
        return
    bound = config.reconnect.max_delay + 2 * config.connection.handshake_timeout + STATUS_TIMEOUT
    print(f"wait   clawsvc asks the gateway again within {config.reconnect.max_delay:g}s ...", file=out, flush=True)
    deadline = time.monotonic() + bound
    pause = threading.Event()
    while _locked_out(config) and time.monotonic() < deadline:
        pause.wait(1.0)


def fix(args: argparse.Namespace, out: TextIO) -> int | None:
    """Repair what doctor --fix can; an exit code when the config cannot even be loaded, else None."""
    try:
        with trust.judged_as_the_service():
            config = load_config(args.config)
    except ConfigError as exc:
        print(f"FAIL   config: {exc}", file=out)
        return exitcodes.CONFIG
    _give_back(config, out)
    _point_back(args, config, out)
    out.flush()
    return None

