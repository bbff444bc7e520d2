"""What `clawsvc install` writes: the units or plist with this machine's paths, the service user, the config, the
reachability drop-in; shown (--dry-run) or written below the install root, a differing config beside the admin's."""

from __future__ import annotations

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

from clawsvc.atomicfile import write_atomically
from clawsvc.commands.install import reach as install_reach
from clawsvc.config import ConfigError, parse_config
from clawsvc.config.instances import INSTALL_ROOT_ENV as INSTALL_ROOT_ENV
from clawsvc.config.instances import install_root as install_root
from clawsvc.users import SERVICE_USER

LAUNCHD_LABEL = "ai.openclaw.clawsvc"
KINDS = ("system", "user", "launchd")
TEMPLATE_EXE = "/usr/local/bin/clawsvc"  # what ExecStart= / ProgramArguments name in the shipped files
# A system service runs with ProtectHome=yes and PrivateTmp=yes: nothing below these is visible to it.
HIDDEN_FROM_SYSTEM_UNIT = tuple(str(p) for p in (*install_reach.HOME_HIDDEN, *install_reach.TMP_HIDDEN))
UNIT_DIR = Path("/etc/systemd/system")
ALERT_UNIT = "clawsvc-alert@.service"  # the units' OnFailure=: runs the alert hooks (`clawsvc alert`)
SYSUSERS_TIMEOUT = 60.0
_REPO = Path(__file__).resolve().parents[3]  # a source checkout: clawsvc/commands/install/plan.py


class InstallError(Exception):
    """Something `clawsvc install` cannot do; str() is one line for the admin."""


@dataclass(frozen=True)
class InstallFile:
    path: Path  # where it belongs on this machine (the install root is added when writing)
    content: str
    mode: int = 0o644
    keep_existing: bool = False  # the config: never overwrite it; a differing new version goes beside it as .new
    group: str | None = None

    @property
    def beside(self) -> Path:
        return self.path.with_name(self.path.name + ".new")


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


def hidden_paths(command: Sequence[str]) -> list[str]:
    """Programs in `command` (and the interpreters behind them) a hardened system unit cannot see."""
    hidden = []
    for word in command:
        if not word.startswith("/"):
            continue
        candidates = [Path(word), Path(os.path.realpath(word))]
        interpreter = install_reach.interpreter_of(Path(word))
        if interpreter is not None:
            candidates += [interpreter, Path(os.path.realpath(interpreter))]
        for path in dict.fromkeys(candidates):
            if any(path == Path(h) or Path(h) in path.parents for h in HIDDEN_FROM_SYSTEM_UNIT):
                hidden.append(str(path))
    return hidden


def _config_file(path: Path, kind: str, text: str | None = None) -> InstallFile:
    """The config to install: `text` (install_config fills in the example), else the shipped example as is."""
    if text is None:
        text = data_text("etc/clawsvc.yaml")
        try:
            parse_config(text, "etc/clawsvc.yaml")
        except ConfigError as exc:
            raise InstallError(f"the shipped example config is invalid: {exc}") from None
    group = SERVICE_USER if kind == "system" else None
    return InstallFile(path, text, mode=0o640 if group else 0o600, keep_existing=True, group=group)


def plan(kind: str, config: Path | None = None, command: Sequence[str] | None = None,
         home: Path | None = None, config_text: str | None = None, unit: str = "clawsvc.service",
         binds: Sequence[Path] = ()) -> Plan:
    """Everything `install` would write for `kind`, with this machine's paths; writes nothing. For the system
    kind, `unit` is the one being installed and `binds` go into its reachability drop-in (install_reach)."""
    command = tuple(command or clawsvc_command())
    home = home or Path.home()
    config = config or default_config(kind, home)
    shown_config = shlex.quote(str(config))
    if kind == "system":
        return _system_plan(command, _config_file(config, kind, config_text), unit, binds)
    if kind == "user":
        unit_text = render_unit(data_text("units/user/clawsvc.service"), command, config)
        target = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "systemd" / "user" / "clawsvc.service"
        alert = InstallFile(target.with_name(ALERT_UNIT), render_unit(data_text(f"units/user/{ALERT_UNIT}"), command,
                                                                      config))
        return Plan(kind, (InstallFile(target, unit_text), _config_file(config, kind, config_text), alert), (
            f"clawsvc check-config -c {shown_config}",
            "systemctl --user daemon-reload",
            "systemctl --user enable --now clawsvc",
            'loginctl enable-linger "$USER"    # keep it running while you are logged out',
        ))
    if kind == "launchd":
        plist = render_plist(data_text("units/ai.openclaw.clawsvc.plist"), command, config, home)
        target = home / "Library" / "LaunchAgents" / "ai.openclaw.clawsvc.plist"
        logs = home / "Library" / "Logs" / "clawsvc"
        return Plan(kind, (InstallFile(target, plist), _config_file(config, kind, config_text)), (
            f"clawsvc check-config -c {shown_config}",
            f"launchctl bootstrap gui/$(id -u) {shlex.quote(str(target))}",
            "launchctl print gui/$(id -u)/ai.openclaw.clawsvc",
        ), directories=(logs,))
    raise InstallError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")


def dropin_path(unit: str) -> Path:
    """The reachability drop-in of `unit` (clawsvc.service or clawsvc@NAME.service)."""
    return UNIT_DIR / f"{unit}.d" / install_reach.DROPIN_NAME


def _system_plan(command: tuple[str, ...], config: InstallFile, unit: str, binds: Sequence[Path]) -> Plan:
    sysusers = Path("/etc/sysusers.d/clawsvc.conf")
    main_config = config.path if unit == "clawsvc.service" else Path("/etc/clawsvc/clawsvc.yaml")
    main_unit = render_unit(data_text("units/clawsvc.service"), command, main_config)
    files = [
        InstallFile(UNIT_DIR / "clawsvc.service", main_unit),
        InstallFile(UNIT_DIR / "clawsvc@.service", render_unit(data_text("units/clawsvc@.service"), command, None)),
        InstallFile(UNIT_DIR / ALERT_UNIT, render_unit(data_text(f"units/{ALERT_UNIT}"), command, main_config)),
        InstallFile(sysusers, data_text("units/clawsvc.sysusers.conf")),
        config,
    ]
    if binds:
        files.append(InstallFile(dropin_path(unit), install_reach.dropin_text(binds)))
    steps = (
        f"systemd-sysusers {sysusers}    # creates the {SERVICE_USER} user",
        f"clawsvc check-config -c {shlex.quote(str(config.path))}",
        "systemctl daemon-reload",
        f"systemctl enable --now {unit}",
    )
    return Plan("system", tuple(files), steps, sysusers=sysusers)


def below_root(root: Path, path: Path) -> Path:
    """Where `path` of the installed machine is written when installing below `root` (CLAWSVC_INSTALL_ROOT)."""
    return root / path.relative_to(path.anchor)


def _chgrp(path: Path, group: str | None, out: TextIO) -> None:
    if group is None:
        return
    try:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    except KeyError:
        print(f"  note: group {group} does not exist yet; after creating it: chgrp {group} {path}", file=out)


def _write(target: Path, content: str, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, content.encode("utf-8"), mode)


def _read(target: Path) -> str | None:
    try:
        return target.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None


def _apply_file(item: InstallFile, root: Path, out: TextIO) -> Path | None:
    """Write one file unless it already says the same; returns what was written. A kept file's differing new
    version goes beside it as NAME.new."""
    target = below_root(root, item.path)
    old = _read(target)
    if old == item.content:
        print(f"same     {target}", file=out)
        return None
    if item.keep_existing and target.exists():
        beside = below_root(root, item.beside)
        if _read(beside) == item.content:
            print(f"kept     {target} (yours; the generated version, which differs, is in {beside})", file=out)
            return None
        _write(beside, item.content, item.mode)
        print(f"kept     {target} (yours; the generated version differs: wrote {beside}, compare and merge)",
              file=out)
        return beside
    _write(target, item.content, item.mode)
    print(f"{'updated' if old is not None else 'wrote':8} {target}", file=out)
    return target


def apply(plan: Plan, root: Path, out: TextIO) -> list[Path]:
    """Write the plan's files below `root` (never over a kept file), then create the service user; returns the
    files written (as below `root`)."""
    written: list[tuple[Path, InstallFile]] = []
    for directory in plan.directories:
        below_root(root, directory).mkdir(parents=True, exist_ok=True)
    for item in plan.files:
        path = _apply_file(item, root, out)
        if path is not None:
            written.append((path, item))
    if plan.sysusers is not None and root == Path("/"):
        _run_sysusers(plan.sysusers, out)
    for path, item in written:
        _chgrp(path, item.group, out)
    return [path for path, _ in written]


def _run_sysusers(conf: Path, out: TextIO) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        print(f"  note: systemd-sysusers not found; create the user yourself: useradd --system --home-dir "
              f"/var/lib/clawsvc --shell /usr/sbin/nologin {SERVICE_USER}", file=out)
        return
    try:
        result = subprocess.run([tool, str(conf)], capture_output=True, text=True, errors="replace", check=False,
                                stdin=subprocess.DEVNULL, timeout=SYSUSERS_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise InstallError(f"{tool} {conf} did not finish within {SYSUSERS_TIMEOUT:g}s; run it by hand to see why, "
                           "then rerun install") from None
    if result.returncode != 0:
        raise InstallError(f"{tool} {conf} failed: {result.stderr.strip() or f'exit {result.returncode}'}")
    print(f"user     {SERVICE_USER} ({tool} {conf})", file=out)


def show(plan: Plan, root: Path, out: TextIO) -> None:
    for item in plan.files:
        target = below_root(root, item.path)
        note = " (exists; would be kept)" if item.keep_existing and target.exists() else ""
        print(f"# ---- {target} (mode {item.mode:04o}){note}", file=out)
        out.write(item.content if item.content.endswith("\n") else item.content + "\n")


