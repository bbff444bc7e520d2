"""What the installed service files say, for `clawsvc doctor`: where each kind's unit is and, from the unit and its
drop-ins, the config file its ExecStart= runs with and the credentials it hands the service."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from clawsvc.commands.install import plan as install

UNIT_NAMES = {"system": "clawsvc.service", "user": "clawsvc.service", "launchd": "ai.openclaw.clawsvc.plist"}
CREDENTIAL_KEYS = ("LoadCredential=", "LoadCredentialEncrypted=", "SetCredential=", "SetCredentialEncrypted=")


@dataclass
class UnitFacts:
    config: Path | None = None  # the `run -c FILE` of the last ExecStart= naming one
    credentials: dict[str, str | None] = field(default_factory=dict)  # credential id -> source file, if loaded
    missing: list[tuple[str, str]] = field(default_factory=list)  # (credential id, file) LoadCredential= lacks


def unit_path(kind: str) -> Path | None:
    """Where `clawsvc install` puts the unit (or plist) of `kind`, whether or not it is there."""
    try:
        planned = install.plan(kind, config=Path("/dev/null"), command=("clawsvc",))
    except install.InstallError:
        return None
    found = next((f.path for f in planned.files if f.path.name == UNIT_NAMES[kind]), None)
    return install.install_root() / found.relative_to(found.anchor) if found else None


def _lines(unit: Path) -> list[str]:
    """The unit's lines, then its drop-ins' in order (a later line overrides an earlier one)."""
    lines: list[str] = []
    for path in [unit, *sorted(unit.parent.glob(f"{unit.name}.d/*.conf"))]:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            lines += path.read_text(encoding="utf-8").splitlines()
    return lines


def read_unit(unit: Path) -> UnitFacts:
    facts = UnitFacts()
    for line in _lines(unit):
        words = line.removeprefix("ExecStart=").split() if line.startswith("ExecStart=") else []
        if "-c" in words[:-1]:
            facts.config = Path(words[words.index("-c") + 1])
        key = next((k for k in CREDENTIAL_KEYS if line.startswith(k)), None)
        if key is None:
            continue
        name, _, source = line.removeprefix(key).strip().partition(":")
        loaded = key.startswith("Load") and source.startswith("/")
        facts.credentials[name] = source if loaded else None
        if loaded and not os.path.exists(source):
            facts.missing.append((name, source))
    return facts
