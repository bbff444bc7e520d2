"""`clawsvc install`: write the systemd unit or launchd plist with this machine's paths, plus a starter config."""

from __future__ import annotations

import argparse
import grp
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from clawsvc import exitcodes
from clawsvc.config import ConfigError, parse_config
from clawsvc.users import SERVICE_USER

KINDS = ("system", "user", "launchd")
TEMPLATE_EXE = "/usr/local/bin/clawsvc"  # what ExecStart= / ProgramArguments name in the shipped files
INSTALL_ROOT_ENV = "CLAWSVC_INSTALL_ROOT"  # like DESTDIR: every file is written below it (packaging, tests)
# A system service runs with ProtectHome=yes and PrivateTmp=yes: nothing below these is visible to it.
HIDDEN_FROM_SYSTEM_UNIT = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")
_REPO = Path(__file__).resolve().parents[2]  # a source checkout: clawsvc/commands/install.py


class InstallError(Exception):
    """Something `clawsvc install` cannot do; str() is one line for the admin."""


@dataclass(frozen=True)
class InstallFile:
    path: Path  # where it belongs on this machine (the install root is added when writing)
    content: str
    mode: int = 0o644
    keep_existing: bool = False  # the config: never overwrite the admin's file
    group: str | None = None


@dataclass(frozen=True)
class Plan:
    kind: str
    files: tuple[InstallFile, ...]
    next_steps: tuple[str, ...]
    warnings: tuple[str, ...] = field(default=())
    sysusers: Path | None = None  # applied with systemd-sysusers when installing into the real root
    directories: tuple[Path, ...] = ()


def data_text(relpath: str) -> str:
    """A shipped file: package data (clawsvc/data/...) in a wheel, else the source checkout's copy."""
    packaged = resources.files("clawsvc").joinpath("data", *relpath.split("/"))
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = _REPO / relpath
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise InstallError(f"{relpath} is missing from this clawsvc installation (looked in clawsvc/data and {_REPO})")


def default_kind(platform: str = sys.platform, euid: int | None = None) -> str:
    if platform == "darwin":
        return "launchd"
    return "system" if (os.geteuid() if euid is None else euid) == 0 else "user"


def clawsvc_command(argv0: str | None = None) -> tuple[str, ...]:
    """The argv prefix that runs this clawsvc: the script being run, else `clawsvc` on PATH, else python -m."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if Path(argv0).name == "clawsvc" and os.access(argv0, os.X_OK):
        return (os.path.abspath(argv0),)
    found = shutil.which("clawsvc")
    if found:
        return (os.path.abspath(found),)
    return (sys.executable, "-m", "clawsvc")


def default_config(kind: str, home: Path) -> Path:
    if kind == "system":
        return Path("/etc/clawsvc/clawsvc.yaml")
    if os.environ.get("XDG_CONFIG_HOME"):
        return Path(os.environ["XDG_CONFIG_HOME"]) / "clawsvc" / "clawsvc.yaml"
    return home / ".config" / "clawsvc" / "clawsvc.yaml"


def _unit_word(word: str) -> str:
    """One ExecStart= word: % is a specifier, whitespace and quotes need quoting."""
    word = word.replace("%", "%%")
    if re.search(r"[\s\"'\\;]", word):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render_unit(template: str, command: Sequence[str], config: Path | None) -> str:
    """The shipped unit with ExecStart= running `command` (and `-c config` when given)."""
    lines = []
    for line in template.splitlines(keepends=True):
        if line.startswith("ExecStart="):
            words = shlex.split(line.removeprefix("ExecStart="))
            if words[0] != TEMPLATE_EXE:
                raise InstallError(f"unexpected ExecStart= in the shipped unit: {line.strip()}")
            args = words[1:]
            if config is not None and "-c" in args:
                args[args.index("-c") + 1] = str(config)
            line = "ExecStart=" + " ".join([_unit_word(w) for w in command] + args) + "\n"
        lines.append(line)
    return "".join(lines)


def render_plist(template: str, command: Sequence[str], config: Path, home: Path) -> str:
    """The shipped plist with absolute paths (launchd expands neither ~ nor $HOME)."""
    try:
        plist: dict[str, Any] = plistlib.loads(template.encode("utf-8"))
    except Exception as exc:  # plistlib raises expat, ValueError or its own errors for a broken file
        raise InstallError(f"the shipped launchd plist is not valid: {exc}") from None

    def expand(value: str) -> str:
        return str(home) + value[1:] if value == "~" or value.startswith("~/") else value

    args = [expand(a) for a in plist["ProgramArguments"][1:]]
    if "-c" in args:
        args[args.index("-c") + 1] = str(config)
    plist["ProgramArguments"] = [*command, *args]
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        if key in plist:
            plist[key] = expand(plist[key])
    return plistlib.dumps(plist, sort_keys=False).decode("utf-8")


def _interpreter(path: Path) -> Path | None:
    """The program a `#!` script runs (pip's console scripts point at their venv's python)."""
    try:
        with path.open("rb") as script:
            first = script.readline(4096)
    except OSError:
        return None
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    return Path(words[0]) if words else None


def hidden_paths(command: Sequence[str]) -> list[str]:
    """Programs in `command` (and the interpreters behind them) a hardened system unit cannot see."""
    hidden = []
    for word in command:
        if not word.startswith("/"):
            continue
        candidates = [Path(word), Path(os.path.realpath(word))]
        interpreter = _interpreter(Path(word))
        if interpreter is not None:
            candidates += [interpreter, Path(os.path.realpath(interpreter))]
        for path in dict.fromkeys(candidates):
            if any(path == Path(h) or Path(h) in path.parents for h in HIDDEN_FROM_SYSTEM_UNIT):
                hidden.append(str(path))
    return hidden


def _config_file(path: Path, kind: str) -> InstallFile:
    example = data_text("etc/clawsvc.yaml")
    try:
        parse_config(example, "etc/clawsvc.yaml")
    except ConfigError as exc:
        raise InstallError(f"the shipped example config is invalid: {exc}") from None
    group = SERVICE_USER if kind == "system" else None
    return InstallFile(path, example, mode=0o640 if group else 0o600, keep_existing=True, group=group)


def plan(kind: str, config: Path | None = None, command: Sequence[str] | None = None,
         home: Path | None = None) -> Plan:
    """Everything `install` would write for `kind`, with this machine's paths; writes nothing."""
    command = tuple(command or clawsvc_command())
    home = home or Path.home()
    config = config or default_config(kind, home)
    shown_config = shlex.quote(str(config))
    if kind == "system":
        return _system_plan(command, config, shown_config)
    if kind == "user":
        unit = render_unit(data_text("units/user/clawsvc.service"), command, config)
        target = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "systemd" / "user" / "clawsvc.service"
        return Plan(kind, (InstallFile(target, unit), _config_file(config, kind)), (
            f"clawsvc check-config -c {shown_config}",
            "systemctl --user daemon-reload",
            "systemctl --user enable --now clawsvc",
            'loginctl enable-linger "$USER"    # keep it running while you are logged out',
        ))
    if kind == "launchd":
        plist = render_plist(data_text("units/ai.openclaw.clawsvc.plist"), command, config, home)
        target = home / "Library" / "LaunchAgents" / "ai.openclaw.clawsvc.plist"
        logs = home / "Library" / "Logs" / "clawsvc"
        return Plan(kind, (InstallFile(target, plist), _config_file(config, kind)), (
            f"clawsvc check-config -c {shown_config}",
            f"launchctl bootstrap gui/$(id -u) {shlex.quote(str(target))}",
            "launchctl print gui/$(id -u)/ai.openclaw.clawsvc",
        ), directories=(logs,))
    raise InstallError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")


def _system_plan(command: tuple[str, ...], config: Path, shown_config: str) -> Plan:
    units = Path("/etc/systemd/system")
    sysusers = Path("/etc/sysusers.d/clawsvc.conf")
    files = (
        InstallFile(units / "clawsvc.service", render_unit(data_text("units/clawsvc.service"), command, config)),
        InstallFile(units / "clawsvc@.service", render_unit(data_text("units/clawsvc@.service"), command, None)),
        InstallFile(sysusers, data_text("units/clawsvc.sysusers.conf")),
        _config_file(config, "system"),
    )
    warnings = tuple(
        f"{path} is not visible to the service (ProtectHome=yes, PrivateTmp=yes hide /home, /root and /tmp): "
        "install clawsvc system-wide, e.g. in a venv under /opt with a Python outside /root"
        for path in hidden_paths(command))
    steps = (
        f"clawsvc check-config -c {shown_config}    # set gateway.command (see `clawsvc gateway-install`)",
        "systemctl daemon-reload",
        "systemctl enable --now clawsvc",
        "systemctl status clawsvc",
    )
    return Plan("system", files, steps, warnings, sysusers=sysusers)


def _target(root: Path, path: Path) -> Path:
    return root / path.relative_to(path.anchor)


def _chgrp(path: Path, group: str | None, out: TextIO) -> None:
    if group is None:
        return
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except KeyError:
        print(f"  note: group {group} does not exist yet; after creating it: chgrp {group} {path}", file=out)


def apply(plan: Plan, root: Path, out: TextIO) -> None:
    """Write the plan's files below `root` (the config only when none exists), then create the service user."""
    written: list[InstallFile] = []
    for directory in plan.directories:
        _target(root, directory).mkdir(parents=True, exist_ok=True)
    for item in plan.files:
        target = _target(root, item.path)
        if item.keep_existing and target.exists():
            print(f"kept     {target} (exists; not overwritten)", file=out)
            continue
        old = target.read_text(encoding="utf-8") if target.is_file() else None
        if old == item.content:
            print(f"same     {target}", file=out)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.clawsvc-tmp")
        tmp.write_text(item.content, encoding="utf-8")
        tmp.chmod(item.mode)
        os.replace(tmp, target)
        print(f"{'updated' if old is not None else 'wrote':8} {target}", file=out)
        written.append(item)
    if plan.sysusers is not None and root == Path("/"):
        _run_sysusers(plan.sysusers, out)
    for item in written:
        if item.group is not None:
            _chgrp(_target(root, item.path), item.group, out)


def _run_sysusers(conf: Path, out: TextIO) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        print(f"  note: systemd-sysusers not found; create the user yourself: useradd --system --home-dir "
              f"/var/lib/clawsvc --shell /usr/sbin/nologin {SERVICE_USER}", file=out)
        return
    result = subprocess.run([tool, str(conf)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InstallError(f"{tool} {conf} failed: {result.stderr.strip() or f'exit {result.returncode}'}")
    print(f"user     {SERVICE_USER} ({tool} {conf})", file=out)


def show(plan: Plan, root: Path, out: TextIO) -> None:
    for item in plan.files:
        target = _target(root, item.path)
        note = " (exists; would be kept)" if item.keep_existing and target.exists() else ""
        print(f"# ---- {target} (mode {item.mode:04o}){note}", file=out)
        out.write(item.content if item.content.endswith("\n") else item.content + "\n")


def install_root() -> Path:
    return Path(os.environ.get(INSTALL_ROOT_ENV) or "/")


def main(args: argparse.Namespace) -> int:
    kind = args.kind or default_kind()
    root = install_root()
    out = sys.stdout
    try:
        todo = plan(kind, Path(args.config).absolute() if args.config else None)
        for warning in todo.warnings:
            print(f"clawsvc: warning: {warning}", file=sys.stderr)
        if args.dry_run:
            show(todo, root, out)
        else:
            apply(todo, root, out)
    except InstallError as exc:
        print(f"clawsvc: install: {exc}", file=sys.stderr)
        return exitcodes.FAIL
    except PermissionError as exc:
        hint = " (run it as root, or use --user)" if kind == "system" else ""
        print(f"clawsvc: install: cannot write {exc.filename}: permission denied{hint}", file=sys.stderr)
        return exitcodes.FAIL
    steps = list(todo.next_steps)
    if todo.sysusers is not None and (args.dry_run or root != Path("/")):
        steps.insert(0, f"systemd-sysusers {todo.sysusers}    # creates the {SERVICE_USER} user")
    print("\n# dry run: nothing was written. Then:" if args.dry_run else "\nNext:", file=out)
    for step in steps:
        print(f"  {step}", file=out)
    return exitcodes.OK
