"""`clawsvc uninstall`: stop and disable the unit (or launchd agent), remove what install wrote for it (unit file,
clawsvc's drop-ins, the unit's encrypted credentials); with --purge also its config, state and cache. The gateway
runtime (shared by every instance) always stays. Idempotent: with nothing left it says so and exits 0."""

from __future__ import annotations

import argparse
import contextlib
import os
import plistlib
import pwd
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from clawsvc import cachedir, exitcodes, trust
from clawsvc.commands import servicectl
from clawsvc.commands.install import agents as install_agents
from clawsvc.commands.install import plan as install
from clawsvc.commands.install import reach as install_reach
from clawsvc.commands.install import units as installed_units
from clawsvc.commands.install.closing import ON_PATH
from clawsvc.commands.runtime import provision as gateway_install
from clawsvc.commands.servicectl import ServiceCtlError
from clawsvc.config import instances, user_state_root
from clawsvc.secrets import credstore
from clawsvc.users import SERVICE_USER

TEMPLATE = "clawsvc@.service"
MAIN_UNIT = "clawsvc.service"
SYSUSERS = Path("/etc/sysusers.d/clawsvc.conf")
CACHE_ROOT = Path(cachedir.SYSTEM)
DROPINS = (install_reach.DROPIN_NAME, credstore.DROPIN_NAME)  # the only drop-ins clawsvc writes


class Refused(Exception):
    """A path uninstall will not remove (or not through); str() is one line naming it and the fix."""


@dataclass(frozen=True)
class Target:
    """What install set up for one kind (and instance); paths as on the machine, without the install root."""

    kind: str
    unit: str  # clawsvc.service, clawsvc@NAME.service, or the launchd label
    unit_file: Path  # the unit (for an instance: the shared template) or the plist
    config: Path
    data_dirs: tuple[tuple[Path, str], ...]  # (directory, what): state, cache, logs; removed by --purge
    instance: str | None = None


@dataclass
class Run:
    root: Path
    out: TextIO
    manage: bool  # talk to systemd/launchd (the real root) or only remove files (an install root)
    changed: bool = False

    def at(self, path: Path) -> Path:
        return install.below_root(self.root, path)

    def say(self, verb: str, what: object, why: str = "") -> None:
        print(f"{verb:8} {what}" + (f" ({why})" if why else ""), file=self.out)


def target(kind: str, instance: str | None, config: Path | None, root: Path) -> Target:
    if kind == "system" and instance is not None:
        return Target(kind, instances.unit_name(instance), install.UNIT_DIR / TEMPLATE,
                      instances.config_path(instance),
                      _data(instances.STATE_ROOT / instance, CACHE_ROOT / instance), instance)
    on_disk = installed_units.unit_path(kind)
    if on_disk is None:
        raise install.InstallError(f"unknown kind {kind!r} (expected one of {', '.join(install.KINDS)})")
    unit_file = Path("/") / on_disk.relative_to(root)
    written = _plist_config(on_disk) if kind == "launchd" else installed_units.read_unit(on_disk).config
    config = written or config or install.default_config(kind, Path.home())
    if kind == "system":
        return Target(kind, MAIN_UNIT, unit_file, config, _data(instances.STATE_ROOT, CACHE_ROOT))
    user_dirs = _data(user_state_root(), Path(cachedir.user_cache_dir(os.environ)))
    if kind == "user":
        return Target(kind, MAIN_UNIT, unit_file, config, user_dirs)
    logs = Path.home() / "Library" / "Logs" / "clawsvc"
    return Target(kind, install.LAUNCHD_LABEL, unit_file, config, (*user_dirs, (logs, "logs")))


def _data(state: Path, cache: Path) -> tuple[tuple[Path, str], ...]:
    return ((state, "state"), (cache, "cache"))


def _plist_config(plist: Path) -> Path | None:
    """The `-c FILE` the installed plist runs clawsvc with."""
    try:
        args = plistlib.loads(plist.read_bytes()).get("ProgramArguments", [])
    except Exception:  # missing file (OSError) or a broken plist (expat, ValueError, plistlib's own errors)
        return None
    return Path(args[args.index("-c") + 1]) if "-c" in args[:-1] else None


def _other_instances(run: Run, own: str | None) -> list[str]:
    """Instances that still use the shared template: their config in /etc/clawsvc or an enabled unit."""
    names = {p.stem for p in run.at(instances.CONFIG_DIR).glob("*.yaml") if p.stem != "clawsvc"}
    for link in run.at(install.UNIT_DIR).glob("*.wants/clawsvc@*.service"):
        names.add(link.name.removeprefix("clawsvc@").removesuffix(".service"))
    names.discard(own or "")
    return sorted(n for n in names if instances.INSTANCE_NAME.fullmatch(n))


def _stop(run: Run, tgt: Target) -> None:
    if not run.manage:
        return
    if tgt.kind != "system" and not run.at(tgt.unit_file).exists():
        return  # a per-user manager may not even be reachable (no session bus) when there is nothing to stop
    if tgt.kind == "launchd":
        stopped = install_agents.deactivate_launchd(tgt.unit, run.out)
    else:
        stopped = install_agents.deactivate_systemd(tgt.kind == "user", tgt.unit, run.out)
    run.changed |= stopped


def _remove_file(run: Run, path: Path, why: str = "") -> None:
    real = run.at(path)
    if real.is_file() or real.is_symlink():
        real.unlink()
        run.say("removed", real, why)
        run.changed = True


def _remove_unit_files(run: Run, tgt: Target) -> None:
    if tgt.kind == "launchd":
        _remove_file(run, tgt.unit_file)
        return
    unit_dir = tgt.unit_file.parent
    for wants in run.at(unit_dir).glob("*.wants"):  # links left behind when the manager was not asked
        _remove_file(run, unit_dir / wants.name / tgt.unit)
    if tgt.kind == "system":
        for path in credstore.remove_unit_credentials(tgt.unit):
            run.say("removed", path, "encrypted credential")
            run.changed = True
    _remove_dropins(run, unit_dir / f"{tgt.unit}.d")
    if tgt.kind == "system":
        _remove_template(run, tgt)
    if tgt.instance is None:
        _remove_file(run, tgt.unit_file)
    elif not _other_instances(run, tgt.instance) and not _main_in_use(run):
        _remove_file(run, install.UNIT_DIR / MAIN_UNIT, "install --instance writes it too; the main unit is not set up")
    if not any(run.at(unit_dir / name).exists() for name in (MAIN_UNIT, TEMPLATE)):
        _remove_file(run, unit_dir / install.ALERT_UNIT, "OnFailure= alert hooks; it goes with the last unit")
        if tgt.kind == "system":
            _remove_path_link(run)


def _remove_path_link(run: Run) -> None:
    """install's `clawsvc` on PATH, when it is still a link to this clawsvc (never another program)."""
    link, command = run.at(ON_PATH), install.clawsvc_command()
    if link.is_symlink() and len(command) == 1 and os.path.realpath(link) == os.path.realpath(command[0]):
        link.unlink()
        run.say("removed", link, "the link install put on PATH")
        run.changed = True


def _remove_dropins(run: Run, dropins: Path) -> None:
    for path in (run.at(dropins) / name for name in DROPINS):
        if path.is_file() or path.is_symlink():
            path.unlink()
            run.say("removed", path, "drop-in")
            run.changed = True
    with contextlib.suppress(OSError):
        others = sorted(p.name for p in run.at(dropins).iterdir())
        if others:
            run.say("kept", run.at(dropins), f"holds drop-ins clawsvc did not write: {', '.join(others)}")
        else:
            run.at(dropins).rmdir()


def _remove_template(run: Run, tgt: Target) -> None:
    template = install.UNIT_DIR / TEMPLATE
    if not run.at(template).exists():
        return
    others = _other_instances(run, tgt.instance)
    if others:
        run.say("kept", run.at(template), f"instances {', '.join(others)} still use it; it goes with the last one")
        return
    _remove_dropins(run, template.parent / f"{TEMPLATE}.d")
    _remove_file(run, template)


def _main_in_use(run: Run) -> bool:
    """Whether clawsvc.service itself is set up (its config, or enabled), not only written by an instance's install."""
    if run.at(instances.CONFIG_DIR / "clawsvc.yaml").exists():
        return True
    if any((wants / MAIN_UNIT).is_symlink() for wants in run.at(install.UNIT_DIR).glob("*.wants")):
        return True
    if not run.manage:
        return False
    state = install_agents.unit_state(False, MAIN_UNIT)
    return (state.get("ActiveState") in install_agents.RUNNING_STATES
            or state.get("UnitFileState") in install_agents.ENABLED_STATES)


def _reload(run: Run, tgt: Target) -> None:
    if run.manage and run.changed and tgt.kind != "launchd":
        servicectl.systemctl(tgt.kind == "user", "daemon-reload")


def _data_in_use(run: Run, tgt: Target) -> str:
    """Why the main unit's state and cache must stay: instances keep theirs below them."""
    if tgt.kind != "system" or tgt.instance is not None:
        return ""
    others = _other_instances(run, None)
    return f"instances {', '.join(others)} keep their state below it" if others else ""


def _purge(run: Run, tgt: Target) -> None:
    for config in (tgt.config, tgt.config.with_name(tgt.config.name + ".new")):
        _remove_file(run, config, "config")
    with contextlib.suppress(OSError):
        run.at(tgt.config.parent).rmdir()  # only when empty
    in_use = _data_in_use(run, tgt)
    for directory, what in tgt.data_dirs:
        real = run.at(directory)
        if not real.is_dir() and not real.is_symlink():
            continue
        if in_use:
            run.say("kept", real, in_use)
            continue
        _remove_tree(real, what, tgt.kind == "system")
        run.say("removed", real, what)
        run.changed = True
    if tgt.kind == "system":
        _purge_user(run, tgt)


def _remove_tree(real: Path, what: str, system: bool) -> None:
    """rm -r of a data directory, never through a symlink nor below a directory an untrusted user could swap.
    The service user owns /var/lib/clawsvc: for the system kind it counts as trusted (like check-config does);
    rmtree itself works through descriptors and refuses a symlink found or swapped in on the way."""
    if real.is_symlink():
        raise Refused(f"not removing {real}: it is a symbolic link (to {os.readlink(real)}); remove the link, "
                      "check who planted it and where it points, then rerun")
    with trust.judged_as_the_service() if system else contextlib.nullcontext():
        try:
            trust.resolve(real, f"{what} directory")
        except trust.TrustError as exc:
            raise Refused(f"not removing {real}: {exc}") from None
    try:
        shutil.rmtree(real)
    except OSError as exc:
        raise Refused(f"cannot remove all of {real}: {exc.strerror or exc} (at {exc.filename or real}); check "
                      "what is left there, then rerun") from None


def _say_gateway_kept(run: Run, tgt: Target) -> None:
    prefix = gateway_install.default_prefix() if tgt.kind != "system" else instances.GATEWAY_PREFIX
    if run.at(prefix).is_dir():
        run.say("kept", run.at(prefix), f"the gateway runtime, shared by every instance; to remove it: "
                f"rm -rf {run.at(prefix)}")


def _purge_user(run: Run, tgt: Target) -> None:
    """The service user goes with the last clawsvc unit; its sysusers.d entry with it."""
    users = _other_instances(run, tgt.instance)
    if tgt.instance is not None and _main_in_use(run):
        users.insert(0, MAIN_UNIT)
    if users:
        run.say("kept", f"user {SERVICE_USER}", f"still used by {', '.join(users)}")
        return
    _remove_file(run, SYSUSERS)
    if not run.manage:
        return
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return
    servicectl.run(["userdel", SERVICE_USER])
    run.say("removed", f"user {SERVICE_USER}", "userdel")
    run.changed = True


def _kept(run: Run, tgt: Target) -> list[Path]:
    found = [run.at(tgt.config)] if run.at(tgt.config).exists() else []
    return found + [run.at(d) for d, what in tgt.data_dirs if what == "state" and run.at(d).is_dir()]


def uninstall(tgt: Target, purge: bool, run: Run) -> int:
    try:
        _stop(run, tgt)
        _remove_unit_files(run, tgt)
        _reload(run, tgt)
        if purge:
            _purge(run, tgt)
    except (ServiceCtlError, credstore.CredstoreError, Refused) as exc:
        print(f"clawsvc: uninstall: {exc}", file=sys.stderr)
        return exitcodes.FAIL
    except OSError as exc:
        print(f"clawsvc: uninstall: cannot remove {exc.filename}: {exc.strerror}", file=sys.stderr)
        return exitcodes.FAIL
    kept = [] if purge else _kept(run, tgt)
    if not run.changed:
        note = f" (kept {', '.join(map(str, kept))}; --purge removes them)" if kept else ""
        print(f"nothing to remove: {tgt.unit} is not installed{note}", file=run.out)
        return exitcodes.OK
    for path in kept:
        run.say("kept", path, "--purge removes it")
    if purge:
        _say_gateway_kept(run, tgt)
    return exitcodes.OK


def main(args: argparse.Namespace) -> int:
    instance = getattr(args, "instance", None)
    kind = args.kind or ("system" if instance else install.default_kind())
    if instance is not None and kind != "system":
        print(f"clawsvc: uninstall: --instance works with --system only (not --{kind})", file=sys.stderr)
        return exitcodes.USAGE
    root = install.install_root()
    try:
        tgt = target(kind, instance, Path(args.config).absolute() if args.config else None, root)
    except install.InstallError as exc:
        print(f"clawsvc: uninstall: {exc}", file=sys.stderr)
        return exitcodes.FAIL
    return uninstall(tgt, args.purge, Run(root, sys.stdout, manage=root == Path("/")))
