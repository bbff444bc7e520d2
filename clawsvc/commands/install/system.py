"""`sudo clawsvc install --system [--instance NAME]`: the whole set-up, ending with the unit enabled, started and
READY. Order: reachability (refuse before writing anything), the gateway (reuse or provision), the files and the
service user, check-config, daemon-reload when a unit changed, enable --now, the status block, then `clawsvc` on
PATH and how to use the assistant (install.closing)."""

from __future__ import annotations

import argparse
import grp
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from clawsvc import exitcodes, trust
from clawsvc.commands import check_config, servicectl
from clawsvc.commands.control import status as control
from clawsvc.commands.install import agents as install_agents
from clawsvc.commands.install import closing, genconfig, reach
from clawsvc.commands.install import plan as files
from clawsvc.commands.runtime import links as gateway_links
from clawsvc.commands.runtime import provision as gateway_install
from clawsvc.config import Config, ConfigError, instances, load_config
from clawsvc.gateway.node import ProvisionError
from clawsvc.service.preflight import preflight
from clawsvc.users import SERVICE_USER, service_uid

JOURNAL_LINES = 30


@dataclass(frozen=True)
class Request:
    unit: str
    config: Path
    instance: str | None
    port: int | None
    no_start: bool
    dry_run: bool
    root: Path

    @property
    def live(self) -> bool:
        """Installing into this machine (not below CLAWSVC_INSTALL_ROOT): users, gateway, systemctl happen."""
        return self.root == Path("/")

    def on_disk(self, path: Path) -> Path:
        return files.below_root(self.root, path)


def service_account() -> reach.Account:
    """The service user's uid and group as permission checks see them (only `other` bits before it exists)."""
    uid = service_uid()
    try:
        gids = frozenset({grp.getgrnam(SERVICE_USER).gr_gid})
    except KeyError:
        gids = frozenset()
    return reach.Account(uid, gids)


def usable_config(path: Path) -> Config | None:
    """The existing config when `check-config` would accept it as is (gateway.command runs), else None."""
    if not path.is_file():
        return None
    try:
        with trust.judged_as_the_service():
            config = load_config(path)
            preflight(config)
    except ConfigError:
        return None
    return config


def gateway_command(req: Request, out: TextIO) -> tuple[str, ...]:
    """gateway.command for a new config: the stable paths of the system gateway-install prefix, provisioned if
    absent (also when a non-root packager stages the install: the unit runs the system's gateway)."""
    prefix = instances.GATEWAY_PREFIX
    version = gateway_links.linked_version(prefix)
    found = gateway_install.find_installation(prefix, version) if version else None
    if not req.live or req.dry_run:
        if found is None:
            print(f"gateway  none in {prefix}; would run: clawsvc gateway-install --prefix {prefix}", file=out)
        return gateway_links.stable_command(prefix)

    def say(message: str) -> None:
        print(f"gateway  {message}", file=out, flush=True)

    if found is not None:
        gateway_install.ensure_installed(prefix, found.version, report=say)
    else:
        gateway_install.ensure_current(prefix, gateway_install.ensure_installed(prefix, report=say), say)
    return gateway_links.stable_command(prefix)


def config_text(req: Request, command: Sequence[str]) -> str:
    if req.instance is None:
        return genconfig.render(files.data_text("etc/clawsvc.yaml"), genconfig.Settings(tuple(command)))
    existing = req.on_disk(req.config)
    port = req.port or genconfig.configured_port(existing) or genconfig.free_port(existing.parent, existing)
    settings = genconfig.instance_settings(req.instance, command, port)
    return genconfig.render(files.data_text("etc/clawsvc.yaml"), settings)


def build(req: Request, out: TextIO) -> files.Plan:
    """The plan (without the config when the existing one is used as is). Raises reach.Unreachable before
    anything is written or provisioned."""
    command = files.clawsvc_command()
    account = service_account()
    reach.check(reach.clawsvc_needs(command), account)
    kept = usable_config(req.on_disk(req.config)) if req.live else None
    gateway = kept.gateway.command if kept is not None else gateway_command(req, out)
    needs = reach.clawsvc_needs(command)
    if req.live or Path(gateway[0]).exists():  # a dry run may not have provisioned it yet
        needs += reach.gateway_needs(gateway)
    binds = reach.check(needs, account)
    if binds:
        print(f"reach    clawsvc or its gateway runs from below a home directory: the unit gets ProtectHome=tmpfs "
              f"and BindReadOnlyPaths={' '.join(map(str, binds))} ({files.dropin_path(req.unit)})", file=out)
    todo = files.plan("system", req.config, command, config_text=config_text(req, gateway), unit=req.unit,
                      binds=binds)
    if kept is None:
        return todo
    print(f"kept     {req.on_disk(req.config)} (yours; its gateway.command works, used as is)", file=out)
    return files.Plan(todo.kind, tuple(f for f in todo.files if f.path != req.config), todo.next_steps,
                      sysusers=todo.sysusers)


def _remove_stale_dropin(req: Request, todo: files.Plan, out: TextIO) -> bool:
    """A reachability drop-in from an earlier install that the unit no longer needs."""
    dropin = files.dropin_path(req.unit)
    if any(f.path == dropin for f in todo.files) or not req.on_disk(dropin).is_file():
        return False
    req.on_disk(dropin).unlink()
    print(f"removed  {req.on_disk(dropin)} (no longer needed)", file=out)
    return True


def dry_run(req: Request, todo: files.Plan, out: TextIO) -> int:
    files.show(todo, req.root, out)
    if req.live:
        closing.link_on_path(files.clawsvc_command(), out, dry_run=True)
    print("\n# dry run: nothing was written or run. It would run:", file=out)
    for step in todo.next_steps:
        print(f"  {step.replace('enable --now', 'enable') if req.no_start else step}", file=out)
    return exitcodes.OK


def _fail(req: Request, what: str, out: TextIO) -> int:
    print(f"clawsvc: install: {what}", file=sys.stderr)
    tail = servicectl.journal_tail(False, req.unit, JOURNAL_LINES)
    if tail.strip():
        print(f"--- last journal lines of {req.unit} (journalctl -u {req.unit}):", file=out)
        out.write(tail if tail.endswith("\n") else tail + "\n")
    return exitcodes.FAIL


def activate(req: Request, changed: bool, out: TextIO) -> int:
    """daemon-reload when a unit file changed; enable (and start, waiting for READY); the status block."""
    reload = changed or servicectl.systemctl(False, "show", req.unit, "--property=NeedDaemonReload"
                                             ).stdout.strip() == "NeedDaemonReload=yes"
    if reload:
        servicectl.systemctl(False, "daemon-reload")
        print("reloaded systemd (unit files changed)", file=out)
    state = install_agents.unit_state(False, req.unit)
    enabled = state.get("UnitFileState") in install_agents.ENABLED_STATES
    active = state.get("ActiveState") == "active"
    if req.no_start:
        if not enabled:
            servicectl.systemctl(False, "enable", req.unit)
        print(f"enabled  {req.unit} (not started: --no-start; start it with: systemctl start {req.unit})", file=out)
        return exitcodes.OK
    if enabled and active and not changed:
        print(f"nothing to change: {req.unit} is enabled and running, no file was rewritten", file=out)
    else:
        started = time.monotonic()
        try:
            if not (enabled and active):
                servicectl.systemctl(False, "enable", "--now", req.unit, timeout=servicectl.SYSTEMCTL_TIMEOUT)
            elif changed:
                servicectl.systemctl(False, "restart", req.unit, timeout=servicectl.SYSTEMCTL_TIMEOUT)
        except servicectl.ServiceCtlError as exc:
            return _fail(req, f"{req.unit} did not start: {exc}", out)
        now = install_agents.unit_state(False, req.unit).get("ActiveState", "unknown")
        if now != "active":
            return _fail(req, f"{req.unit} is {now} after `systemctl enable --now {req.unit}`", out)
        verb = "restarted (its unit changed)" if enabled and active else "enabled and started"
        print(f"{verb} {req.unit}: READY after {time.monotonic() - started:.1f}s", file=out)
    out.flush()
    code = control.status_main(argparse.Namespace(config=str(req.config), json=False))
    return exitcodes.OK if code == exitcodes.OK else _fail(req, f"{req.unit} is active but `clawsvc status` "
                                                               f"exited {code}", out)


def check(req: Request) -> int:
    """`clawsvc check-config` itself (as the service would judge), so install refuses exactly what run would."""
    sys.stdout.flush()
    return check_config.main(argparse.Namespace(config=str(req.config), print=False))


def install(req: Request, out: TextIO) -> int:
    todo = build(req, out)
    if req.dry_run:
        return dry_run(req, todo, out)
    written = files.apply(todo, req.root, out)
    units = req.on_disk(files.UNIT_DIR)
    changed = any(units in path.parents for path in written)
    changed = _remove_stale_dropin(req, todo, out) or changed
    if not req.live:
        print("\nNext (on the machine):", file=out)
        for step in todo.next_steps:
            print(f"  {step}", file=out)
        return exitcodes.OK
    code = check(req)
    if code != exitcodes.OK:
        return code
    code = activate(req, changed, out)
    if code == exitcodes.OK:
        closing.link_on_path(files.clawsvc_command(), out)
        closing.closing_block(req.config, req.instance, out)
    return code


def request(args: argparse.Namespace) -> Request:
    instance = args.instance
    config = Path(args.config).absolute() if args.config else Path("/etc/clawsvc/clawsvc.yaml")
    return Request(instances.unit_name(instance), config, instance, args.port, args.no_start, args.dry_run,
                   files.install_root())


def main(args: argparse.Namespace) -> int:
    req = request(args)
    out = sys.stdout
    try:
        return install(req, out)
    except reach.Unreachable as exc:
        print(f"clawsvc: install: nothing was written: {exc}", file=sys.stderr)
    except (files.InstallError, genconfig.ConfigTemplateError, ProvisionError) as exc:
        print(f"clawsvc: install: {exc}", file=sys.stderr)
    except servicectl.ServiceCtlError as exc:
        print(f"clawsvc: install: {exc}", file=sys.stderr)
    except PermissionError as exc:
        print(f"clawsvc: install: cannot write {exc.filename}: permission denied (run it as root)", file=sys.stderr)
    except OSError as exc:  # e.g. /etc/clawsvc is a file: ENOTDIR
        print(f"clawsvc: install: cannot write {exc.filename}: {exc.strerror or exc}; fix what is in its place, "
              "then rerun", file=sys.stderr)
    return exitcodes.FAIL
