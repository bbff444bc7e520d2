"""Talking to the service manager for install, uninstall and keys: systemctl (system or --user), journalctl
and launchctl, each call bounded in time and failing as one line that names the command."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

SYSTEMCTL_TIMEOUT = 300.0  # `enable --now` of a Type=notify unit waits for READY (TimeoutStartSec=150s and more)
QUICK_TIMEOUT = 30.0


class ServiceCtlError(Exception):
    """A service-manager command that failed or is missing; str() is one line."""


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run(argv: Sequence[str], timeout: float = QUICK_TIMEOUT, check: bool = True) -> Result:
    """Run one manager command without a shell or a pager; with `check`, a non-zero exit raises."""
    tool = shutil.which(argv[0])
    if tool is None:
        raise ServiceCtlError(f"{argv[0]} not found on PATH")
    env = {"SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "LANG": "C.UTF-8"}
    try:
        done = subprocess.run([tool, *argv[1:]], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False,
                              env=_base_env() | env)
    except subprocess.TimeoutExpired:
        raise ServiceCtlError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from None
    except OSError as exc:
        raise ServiceCtlError(f"cannot run {tool}: {exc.strerror}") from None
    result = Result(done.returncode, done.stdout, done.stderr)
    if check and not result.ok:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise ServiceCtlError(f"`{' '.join(argv)}` failed (exit {done.returncode})"
                              + (f": {detail[-1][:300]}" if detail else ""))
    return result


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "USER", "LOGNAME", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "SYSTEMD_LOG_LEVEL")
    return {key: os.environ[key] for key in keep if key in os.environ}


def systemctl(user: bool, *args: str, timeout: float = QUICK_TIMEOUT, check: bool = True) -> Result:
    return run(["systemctl", *(["--user"] if user else []), "--no-pager", *args], timeout=timeout, check=check)


def journal_tail(user: bool, unit: str, lines: int = 30) -> str:
    """The unit's last journal lines (for an admin reading why a start failed); empty when unavailable."""
    try:
        result = run(["journalctl", *(["--user"] if user else []), "--no-pager", "-u", unit, "-n", str(lines),
                      "-o", "short-precise"], check=False)
    except ServiceCtlError:
        return ""
    return result.stdout


def launchctl(*args: str, check: bool = True) -> Result:
    return run(["launchctl", *args], check=check)


def start_refused(unit: str) -> str | None:
    """One line with the fix when systemd refused to start `unit` (the system's, else the caller's --user one)
    because it was started too often (Result=start-limit-hit); None otherwise, or without a running systemd."""
    if not os.path.isdir("/run/systemd/system"):
        return None
    for user in (False, True):
        try:
            shown = systemctl(user, "show", unit, "--property=LoadState,Result", check=False).stdout
        except ServiceCtlError:
            return None
        props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        if props.get("LoadState") != "loaded":
            continue
        if props.get("Result") != "start-limit-hit":
            return None
        scope, sudo = ("--user ", "") if user else ("", "sudo ")
        return (f"systemd refused to start {unit}: it was started too often (start-limit-hit); run "
                f"`{sudo}systemctl {scope}reset-failed {unit}`, then `{sudo}systemctl {scope}start {unit}`")
    return None
