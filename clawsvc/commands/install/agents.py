"""Starting and stopping the per-user kinds: a `systemctl --user` unit and a launchd agent.

Contract (install calls activate_*, after writing the unit or plist; uninstall calls deactivate_*, before
removing it). Every function prints one line per step to `out` and runs each manager command through
`servicectl`; none raises for a manager failure.

    activate_user(unit_path, unit, out, changed) -> int
        `changed`: install (re)wrote `unit_path`. daemon-reload only then; `enable --now UNIT` (blocks until
        READY for Type=notify); a changed unit that was already running is restarted so the new file applies.
        Checks the unit is active; says when `loginctl enable-linger USER` is needed. 0, or 1 after printing
        the error and the unit's last journal lines.
    activate_launchd(plist_path, label, out, changed) -> int
        `launchctl bootstrap gui/UID PLIST` (a loaded, unchanged agent is left alone; a changed one is booted
        out first), then `launchctl print gui/UID/LABEL` until it runs. 0, or 1 after printing the error and
        the agent's log tail.
    deactivate_systemd(user, unit, out) -> bool   (deactivate_user(unit, out) is the --user one)
        `disable --now UNIT` when it is enabled or running; True when it did something. Raises ServiceCtlError
        when the unit is still running afterwards.
    deactivate_launchd(label, out) -> bool
        `launchctl bootout gui/UID/LABEL` when loaded; True when it did something.
"""

from __future__ import annotations

import contextlib
import os
import plistlib
import pwd
import threading
import time
from pathlib import Path
from typing import TextIO

from clawsvc import exitcodes
from clawsvc.commands import servicectl
from clawsvc.commands.servicectl import ServiceCtlError

RUNNING_STATES = ("active", "activating", "reloading", "deactivating")
ENABLED_STATES = ("enabled", "enabled-runtime", "linked", "linked-runtime", "alias")
LAUNCHD_START_WAIT = 15.0  # RunAtLoad starts the agent at bootstrap; allow for a slow first exec
JOURNAL_LINES = 30


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def unit_state(user: bool, unit: str) -> dict[str, str]:
    """LoadState, ActiveState and UnitFileState of `unit` as the manager sees it."""
    shown = servicectl.systemctl(user, "show", unit, "--property=LoadState,ActiveState,UnitFileState").stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def _fail(user: bool, unit: str, what: str, out: TextIO) -> int:
    print(f"clawsvc: {what}", file=out)
    tail = servicectl.journal_tail(user, unit, JOURNAL_LINES)
    scope = "--user " if user else ""
    if tail.strip():
        print(f"--- last journal lines of {unit} (journalctl {scope}-u {unit}):", file=out)
        out.write(tail if tail.endswith("\n") else tail + "\n")
    return exitcodes.FAIL


def activate_user(unit_path: Path, unit: str, out: TextIO, changed: bool = True) -> int:
    try:
        if changed:
            servicectl.systemctl(True, "daemon-reload")
            print(f"reloaded the user manager ({unit_path} changed)", file=out)
        was_running = unit_state(True, unit).get("ActiveState") in RUNNING_STATES
        servicectl.systemctl(True, "enable", "--now", unit, timeout=servicectl.SYSTEMCTL_TIMEOUT)
        if changed and was_running:
            servicectl.systemctl(True, "restart", unit, timeout=servicectl.SYSTEMCTL_TIMEOUT)
            print(f"restarted {unit} (its unit file changed)", file=out)
        state = unit_state(True, unit).get("ActiveState", "unknown")
    except ServiceCtlError as exc:
        return _fail(True, unit, f"{unit} did not start: {exc}", out)
    if state != "active":
        return _fail(True, unit, f"{unit} is {state} after `systemctl --user enable --now {unit}`", out)
    print(f"enabled  {unit} (systemctl --user; active)", file=out)
    _say_linger(out)
    return exitcodes.OK


def _say_linger(out: TextIO) -> None:
    """A user manager stops with the user's last session unless lingering is on."""
    user = _user_name()
    try:
        shown = servicectl.run(["loginctl", "show-user", user, "--property=Linger"], check=False)
    except ServiceCtlError:
        shown = None
    if shown is not None and shown.ok and shown.stdout.strip() == "Linger=yes":
        return
    print(f"note: it stops when {user} logs out; to keep it running: loginctl enable-linger {user}", file=out)


def deactivate_systemd(user: bool, unit: str, out: TextIO) -> bool:
    state = unit_state(user, unit)
    running = state.get("ActiveState") in RUNNING_STATES
    enabled = state.get("UnitFileState") in ENABLED_STATES
    if not (running or enabled):
        return False
    servicectl.systemctl(user, "disable", "--now", unit, timeout=servicectl.SYSTEMCTL_TIMEOUT, check=False)
    after = unit_state(user, unit).get("ActiveState", "unknown")
    if after in RUNNING_STATES:
        raise ServiceCtlError(f"{unit} is still {after} after `systemctl disable --now {unit}`")
    print(f"stopped  {unit} (disabled)" if running else f"disabled {unit}", file=out)
    return True


def deactivate_user(unit: str, out: TextIO) -> bool:
    return deactivate_systemd(True, unit, out)


def _domain() -> str:
    return f"gui/{os.getuid()}"


def _launchd_state(label: str) -> str | None:
    """The agent's `state = ...` from launchctl print, or None when it is not loaded."""
    shown = servicectl.launchctl("print", f"{_domain()}/{label}", check=False)
    if not shown.ok:
        return None
    for line in shown.stdout.splitlines():
        key, _, value = line.strip().partition(" = ")
        if key == "state":
            return value.strip()
    return "unknown"


def activate_launchd(plist_path: Path, label: str, out: TextIO, changed: bool = True) -> int:
    target = f"{_domain()}/{label}"
    try:
        loaded = _launchd_state(label) is not None
        if loaded and not changed:
            print(f"same     {target} (loaded; plist unchanged)", file=out)
            return exitcodes.OK
        if loaded:
            servicectl.launchctl("bootout", target)
            print(f"unloaded {target} (its plist changed)", file=out)
        servicectl.launchctl("bootstrap", _domain(), str(plist_path))
        state = _wait_running(label)
    except ServiceCtlError as exc:
        return _fail_launchd(plist_path, f"{label} did not start: {exc}", out)
    if state != "running":
        return _fail_launchd(plist_path, f"{target} is {state or 'not loaded'} after launchctl bootstrap", out)
    print(f"loaded   {target} (running)", file=out)
    return exitcodes.OK


def _wait_running(label: str) -> str | None:
    deadline = time.monotonic() + LAUNCHD_START_WAIT
    pause = threading.Event()
    state = _launchd_state(label)
    while state != "running" and time.monotonic() < deadline:
        pause.wait(0.5)
        state = _launchd_state(label)
    return state


def _fail_launchd(plist_path: Path, what: str, out: TextIO) -> int:
    print(f"clawsvc: {what}", file=out)
    log = _plist_log(plist_path)
    lines: list[str] = []
    if log is not None:
        with contextlib.suppress(OSError):
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-JOURNAL_LINES:]
    if lines:
        print(f"--- last lines of {log}:", file=out)
        out.write("\n".join(lines) + "\n")
    return exitcodes.FAIL


def _plist_log(plist_path: Path) -> Path | None:
    try:
        plist = plistlib.loads(plist_path.read_bytes())
    except Exception:  # plistlib raises expat, ValueError or its own errors; OSError for a missing file
        return None
    value = plist.get("StandardErrorPath") if isinstance(plist, dict) else None
    return Path(value) if isinstance(value, str) else None


def deactivate_launchd(label: str, out: TextIO) -> bool:
    if _launchd_state(label) is None:
        return False
    servicectl.launchctl("bootout", f"{_domain()}/{label}")
    print(f"stopped  {_domain()}/{label} (launchctl bootout)", file=out)
    return True
