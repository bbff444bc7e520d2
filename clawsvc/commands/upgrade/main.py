"""`clawsvc upgrade [VERSION] [--rollback]`: provision, canary (on a copy of the service's state, also before a
rollback), switch PREFIX/current, restart through the service, verify, and switch back when the new version
does not come up healthy.

Only a gateway installed by `gateway-install` is upgraded: the config's gateway.command must be the prefix's
stable command (PREFIX/current/node + entry), so moving the `current` link is the whole switch.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from clawsvc import exitcodes
from clawsvc.commands.control.client import load
from clawsvc.commands.runtime import links as gateway_links
from clawsvc.commands.runtime.provision import ensure_installed, find_installation, locked, resolve_version
from clawsvc.commands.runtime.versions import prune
from clawsvc.commands.upgrade import openclaw
from clawsvc.commands.upgrade.canary import CanaryFailed, run_canary
from clawsvc.commands.upgrade.statecopy import StateCopyError
from clawsvc.commands.upgrade.switchover import NotServing, Service, ServiceGone
from clawsvc.config import Config
from clawsvc.gateway.node import ProvisionError
from clawsvc.service import alerts, catalogue
from clawsvc.service.events import Event
from clawsvc.service.status import Snapshot

LATEST = "latest"
UPGRADE_LOCK = ".upgrade.lock"  # held for a whole upgrade (the prefix's install lock only for each step)


def say(message: str) -> None:
    print(f"clawsvc upgrade: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> int:
    say(f"error: {message}")
    return exitcodes.FAIL


class Upgrade:
    """One upgrade or rollback of the gateway under `prefix`, currently on `current`."""

    def __init__(self, config: Config, prefix: Path, current: str) -> None:
        self.config, self.prefix, self.current = config, prefix, current
        self.service = Service(config)

    def upgrade(self, spec: str) -> int:
        target = resolve_version(self.prefix, spec)
        if target == self.current:
            say(f"the gateway is already on openclaw {target} ({self.prefix / gateway_links.CURRENT}); nothing to do")
            return exitcodes.OK
        before = self._service_before()
        found = ensure_installed(self.prefix, target, report=say)
        refused = self._canary(found.version)
        return refused if refused is not None else self._switch(target, before)

    def rollback(self) -> int:
        previous = gateway_links.linked_version(self.prefix, gateway_links.PREVIOUS)
        if previous is None:
            return fail(f"there is no previous version to go back to ({self.prefix / gateway_links.PREVIOUS} is "
                        "missing); `clawsvc upgrade VERSION` switches to a version by name")
        if find_installation(self.prefix, previous) is None:
            return fail(f"the previous version, {gateway_links.version_dir(self.prefix, previous)}, is missing or "
                        f"incomplete; `clawsvc upgrade {previous}` installs it again and switches to it")
        before = self._service_before()
        refused = self._canary(previous)
        return refused if refused is not None else self._switch(previous, before, "rolled back")

    def _canary(self, version: str) -> int | None:
        """Start `version` on a copy of the service's state until its hello-ok: None when it answered, else
        the exit code after saying why nothing was switched."""
        keeps = f"nothing was switched, openclaw {self.current} keeps serving"
        say(f"canary: starting openclaw {version} on a scratch port and a copy of the service's state (bound: "
            f"gateway.start_timeout {self.config.gateway.start_timeout:g}s)")
        try:
            took = run_canary(self.config, gateway_links.version_command(self.prefix, version), report=say)
        except StateCopyError as exc:
            return fail(f"{exc}; {keeps}")
        except CanaryFailed as exc:
            for line in exc.lines:
                print(f"  | {line}", file=sys.stderr)
            if exc.newer_state:
                say(f"hint: {openclaw.schema_hint(version, self.config.gateway.state_dir)}")
            return fail(f"openclaw {version} failed its canary: {exc}; {keeps}")
        say(f"canary: openclaw {version} answered hello-ok {took:.1f}s after its start; stopped it")
        return None

    def _service_before(self) -> Snapshot | None:
        """The service's state before anything changes; None when it is not running. ServiceRefused when it
        runs a gateway it did not start (a restart through it would not run the new version)."""
        try:
            snap = self.service.status()
        except ServiceGone:
            return None
        except NotServing as exc:
            raise ServiceRefused(str(exc)) from None
        if not snap.owned:
            raise ServiceRefused(f"clawsvc adopted a gateway it did not start (pid {snap.pid or '?'}), so restarting "
                                 "it would not run another version; stop that gateway or restart clawsvc first")
        return snap

    def _switch(self, new: str, before: Snapshot | None, done: str = "upgraded") -> int:
        old, old_previous = self.current, gateway_links.linked_version(self.prefix, gateway_links.PREVIOUS)
        self._point(new, old)
        say(f"switched {self.prefix / gateway_links.CURRENT} -> openclaw-{new} (previous: {old})")
        if before is None:
            say(f"the service is not running; its next start runs openclaw {new}")
            self._prune({new, old})
            return exitcodes.OK
        try:
            served = self.service.restart_and_verify(new)
        except (NotServing, ServiceGone) as exc:
            return self._switch_back(old, old_previous, str(exc), new)
        say(f"openclaw {new} is serving as gateway pid {served.pid}: running {served.running_after:.1f}s after "
            f"the restart request, healthy after {served.healthy_after:.1f}s")
        self._prune({new, old})
        print(f"{done}: openclaw {old} -> {new}")
        return exitcodes.OK

    def _switch_back(self, old: str, old_previous: str | None, why: str, new: str) -> int:
        self._point(old, old_previous)
        say(f"{why}; switched {self.prefix / gateway_links.CURRENT} back to openclaw-{old}, restarting it")
        event = Event(time.time(), "service", catalogue.ROLLED_BACK.name, catalogue.ROLLED_BACK.payload(new, old, why))
        for failure in alerts.fire(self.config, event):  # the config's hooks for upgrade.rolled-back, now
            say(failure)
        try:
            self.service.restart_and_verify(old)
        except ServiceGone as exc:
            gone = "" if str(exc) == why else f"; {exc}"
            return fail(f"rolled back to {old}: {why}{gone}; start clawsvc again (e.g. systemctl start clawsvc): "
                        f"it runs {old}")
        except NotServing as exc:
            return fail(f"rolled back to {old}: {why}; but {old} did not come back either: {exc}; "
                        "see `clawsvc status` and the service's log")
        return fail(f"rolled back to {old}: {why}")

    def _point(self, current: str, previous: str | None) -> None:
        try:
            with locked(self.prefix, say):
                gateway_links.switch(self.prefix, current, previous)
        except OSError as exc:
            raise ProvisionError(f"cannot switch {self.prefix / gateway_links.CURRENT} to openclaw-{current}: "
                                 f"{exc.strerror or exc}") from None

    def _prune(self, keep: set[str]) -> None:
        try:
            with locked(self.prefix, say):
                prune(self.prefix, keep, say)
        except OSError as exc:
            say(f"warning: could not remove old versions from {self.prefix}: {exc.strerror or exc}")


@contextlib.contextmanager
def only_upgrade(prefix: Path) -> Iterator[None]:
    """One upgrade or rollback of a prefix at a time: a second one would switch the links under the first,
    and its prune could remove the version the first just installed. ProvisionError when one is running."""
    try:
        fd = os.open(prefix / UPGRADE_LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise ProvisionError(f"cannot open {prefix / UPGRADE_LOCK}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProvisionError(f"another `clawsvc upgrade` is working on {prefix}; let it finish, then see "
                                 "`clawsvc status`") from None
        yield
    finally:
        os.close(fd)


class ServiceRefused(Exception):
    """The running service cannot take a switch; str() is one line with the fix."""


def installed_prefix(config: Config) -> Path | str:
    """The gateway-install prefix the config's gateway.command runs from, or the one-line refusal."""
    command = config.gateway.command
    prefix = gateway_links.prefix_of(command)
    where = f" in {config.source}" if config.source else ""
    if prefix is None:
        return (f"gateway.command{where} ({shlex.join(command)}) is not a gateway installed by "
                "`clawsvc gateway-install`; run it and set gateway.command to the stable command it prints")
    if gateway_links.linked_version(prefix) is None:
        return (f"{prefix / gateway_links.CURRENT} is missing or not a link to an openclaw-<version> directory; "
                f"`clawsvc gateway-install --prefix {prefix}` creates it")
    return prefix


def main(args: argparse.Namespace) -> int:
    if args.rollback and args.target_version:
        say("error: --rollback goes back to the previous version; give either VERSION or --rollback")
        return exitcodes.USAGE
    config = load(args)
    if config is None:
        return exitcodes.CONFIG
    prefix = installed_prefix(config)
    if isinstance(prefix, str):
        return fail(prefix)
    current = gateway_links.linked_version(prefix)
    assert current is not None
    run = Upgrade(config, prefix, current)
    try:
        with only_upgrade(prefix):
            return run.rollback() if args.rollback else run.upgrade(args.target_version or LATEST)
    except (ProvisionError, ServiceRefused) as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        now = gateway_links.linked_version(prefix) or "nothing"
        say(f"interrupted; {prefix / gateway_links.CURRENT} -> openclaw-{now}; see `clawsvc status`"
            + ("" if now == current else f", and `clawsvc upgrade --rollback` goes back to {current}"))
        return exitcodes.INTERRUPTED
