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
from collections.abc import Sequence
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
    per process unless `quiet` (a check that reports, rather than a load)."""
    if not usernames:
        return {}
    try:
        values = keyring_child("get", usernames)["values"]
    except KeyringUnavailable as exc:
        if not quiet:
            _warn_once(exc)
        return {}
    return {name: found for name, found in values.items() if found}


def _warn_once(exc: KeyringUnavailable) -> None:
    with _KeyringState.lock:
        first, _KeyringState.warned = not _KeyringState.warned, True
    if first:
        log.warning("keyring not used: %s; reading secrets from $CREDENTIALS_DIRECTORY and files instead "
                    "(auth.token_file, else a token generated under gateway.state_dir)", exc)
