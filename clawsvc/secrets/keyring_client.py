"""Keyring calls, each in a short-lived clawsvc.secrets.keyring_child killed at KEYRING_TIMEOUT.

The service never imports `keyring` (~13 MiB for good), and a Secret Service that never answers (a locked
collection waiting for a GUI prompt on a headless box) cannot hang it: after one timeout the keyring is marked
broken and not asked again by this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clawsvc.logs import redact, register_secret
from clawsvc.secrets.errors import KeyringUnavailable
from clawsvc.text import cut

log = logging.getLogger("clawsvc.secrets")

KEYRING_SERVICE = "clawsvc"
KEYRING_TIMEOUT = 10.0
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the directory holding the clawsvc package


class _KeyringState:
    lock = threading.Lock()
    broken: str | None = None  # why the keyring is unusable for the rest of this process
    warned = False


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return cut(redact(lines[-1].strip()), 200) if lines else ""


def keyring_child(op: str, usernames: Sequence[str] = (), value: str | None = None) -> dict[str, Any]:
    """Runs one operation in clawsvc.secrets.keyring_child; KeyringUnavailable when the keyring cannot serve it."""
    if _KeyringState.broken:
        raise KeyringUnavailable(_KeyringState.broken)
    request = json.dumps({"op": op, "service": KEYRING_SERVICE, "usernames": list(usernames), "value": value})
    command = [sys.executable, "-m", "clawsvc.secrets.keyring_child"]
    try:
        # `-m` puts the working directory first on sys.path: run from the one holding this very clawsvc, so
        # a keyring.py lying in the caller's directory (say /tmp) can never see the keys
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True, cwd=PACKAGE_PARENT)
    except OSError as exc:
        raise KeyringUnavailable(f"cannot start {' '.join(command)}: {exc.strerror or exc}") from None
    with child:
        try:
            out, err = child.communicate(request.encode(), timeout=KEYRING_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the whole group: a D-Bus helper it started goes too
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.communicate(timeout=KEYRING_TIMEOUT)
            _KeyringState.broken = (f"the keyring did not answer within {KEYRING_TIMEOUT:g}s "
                                    "(a locked or unreachable Secret Service?)")
            raise KeyringUnavailable(_KeyringState.broken) from None
    try:
        reply: dict[str, Any] = json.loads(out)
    except ValueError:
        why = _last_line(err.decode(errors="replace"))
        raise KeyringUnavailable(f"the keyring helper ({' '.join(command)}) failed with "
                                 f"exit status {child.returncode}{': ' + why if why else ''}") from None
    for found in reply["values"].values():
        if found:
            register_secret(found)
    if reply["error"]:
        raise KeyringUnavailable(reply["error"])
    return reply


def keyring_status() -> tuple[bool, str]:
    """(usable, backend description); no backend on a headless box is normal, not an error."""
    try:
        return True, keyring_child("status")["backend"]
    except KeyringUnavailable as exc:
        return False, str(exc)


def keyring_values(usernames: Sequence[str], *, quiet: bool = False) -> dict[str, str]:
    """The stored values found, all in one child; {} when the keyring is unusable, which is warned about once
    per process unless `quiet` (a check that reports, rather than a load). Where no backend can exist, no child
    is started (it would take a few hundred ms of every start to say so)."""
    if not usernames:
        return {}
    try:
        if (why := no_backend_here()) is not None:
            raise KeyringUnavailable(why)
        values = keyring_child("get", usernames)["values"]
    except KeyringUnavailable as exc:
        if not quiet:
            _warn_once(exc)
        return {}
    return {name: found for name, found in values.items() if found}


def no_backend_here(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the keyring cannot have a backend here, or None when it may have one and must be asked.

    Only on Linux, where every backend keyring ships talks to a D-Bus session bus: without one (no
    $DBUS_SESSION_BUS_ADDRESS, no $XDG_RUNTIME_DIR/bus, no X display to autolaunch one) none of them is viable,
    unless a backend is chosen (PYTHON_KEYRING_BACKEND, keyringrc.cfg) or another package installs one."""
    if not sys.platform.startswith("linux") or environ.get("PYTHON_KEYRING_BACKEND"):
        return None
    if environ.get("DBUS_SESSION_BUS_ADDRESS") or environ.get("DISPLAY"):
        return None
    runtime = environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.exists(os.path.join(runtime, "bus")):
        return None
    home = environ.get("HOME") or os.path.expanduser("~")
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    if os.path.exists(os.path.join(config_home, "python_keyring", "keyringrc.cfg")):
        return None
    if _other_backends():
        return None
    return "no keyring backend can run here (no D-Bus session bus, no PYTHON_KEYRING_BACKEND, no keyringrc.cfg)"


def _other_backends() -> list[str]:
    """Keyring backends registered by packages other than keyring (entry point group keyring.backends), found the
    way importlib.metadata finds them (*.dist-info and *.egg-info on sys.path, the child's first) but without
    importing it: that import alone costs more than the whole scan."""
    found = []
    for directory in dict.fromkeys([str(PACKAGE_PARENT), *sys.path]):
        try:
            names = os.listdir(directory or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                found += [value for value in _entry_points(os.path.join(directory, name), "keyring.backends")
                          if not value.startswith("keyring.backends.")]
    return found


def _entry_points(distribution: str, group: str) -> list[str]:
    """The values of one entry point group in a distribution's entry_points.txt ([] when it has none)."""
    try:
        with open(os.path.join(distribution, "entry_points.txt"), encoding="utf-8", errors="replace") as file:
            text = file.read()
    except OSError:
        return []
    if f"[{group}]" not in text:
        return []
    values, inside = [], False
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            inside = line == f"[{group}]"
        elif inside and "=" in line:
            values.append(line.split("=", 1)[1].strip())
    return values


def _warn_once(exc: KeyringUnavailable) -> None:
    with _KeyringState.lock:
        first, _KeyringState.warned = not _KeyringState.warned, True
    if first:
        log.warning("keyring not used: %s; reading secrets from $CREDENTIALS_DIRECTORY and files instead "
                    "(auth.token_file, else a token generated under gateway.state_dir)", exc)
