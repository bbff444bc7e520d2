"""The node that runs the gateway: its version against the openclaw package's `engines.node` range (|| alternatives
of comparators, x-ranges, ^, ~ and hyphen ranges; minimal on purpose, prerelease tags are ignored, but exact for the
ranges Node packages put in `engines`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

Version = tuple[int, int, int]
_PART = r"(\d+|[xX*])"
_COMPARATOR = re.compile(rf"^(<=|>=|<|>|=|\^|~)?v?{_PART}(?:\.{_PART})?(?:\.{_PART})?(?:[-+][0-9A-Za-z.+-]*)?$")
_OPS: dict[str, Callable[[Version, Version], bool]] = {
    "=": lambda a, b: a == b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def parse_version(text: str) -> Version:
    match = re.match(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    major, minor, patch = (int(part or 0) for part in match.groups())
    return (major, minor, patch)


def _bump(base: Version, index: int) -> Version:
    parts = [*base[:index], base[index] + 1, 0, 0]
    return (parts[0], parts[1], parts[2])


def _comparators(token: str) -> list[tuple[str, Version]]:
    match = _COMPARATOR.match(token)
    if not match:
        raise ValueError(f"not a version range comparator: {token!r}")
    op, raw = match.group(1) or "=", match.groups()[1:]
    concrete = [int(p) for p in _leading_digits(raw)]
    n = len(concrete)
    if n == 0:
        return [("<", (0, 0, 0))] if op in ("<", ">") else []
    padded = [*concrete, 0, 0][:3]
    base = (padded[0], padded[1], padded[2])
    if n == 3 and op in _OPS:
        return [(op, base)]
    if op == "^":
        first = next((i for i in range(n) if base[i]), n - 1)
        return [(">=", base), ("<", _bump(base, first))]
    upper = _bump(base, 0 if op == "~" and n == 1 else (1 if op == "~" else n - 1))
    return {"=": [(">=", base), ("<", upper)], "~": [(">=", base), ("<", upper)], ">=": [(">=", base)],
            "<": [("<", base)], ">": [(">=", upper)], "<=": [("<", upper)]}[op]


def _leading_digits(parts: tuple[str | None, ...]) -> list[str]:
    digits = []
    for part in parts:
        if part is None or not part.isdigit():
            break
        digits.append(part)
    return digits


def _alternatives(engines_range: str) -> list[list[tuple[str, Version]]]:
    alternatives = []
    for alternative in engines_range.split("||"):
        text = re.sub(r"(\S+)\s+-\s+(\S+)", r">=\1 <=\2", alternative.strip())
        text = re.sub(r"(<=|>=|<|>|=|\^|~)\s+", r"\1", text)
        alternatives.append([c for token in text.split() for c in _comparators(token)])
    return alternatives


def node_satisfies(node_version: str, engines_range: str) -> bool:
    """Whether node_version (e.g. "v24.21.0") is in an npm engines range (e.g. ">=24.16 <25 || >=26.1")."""
    have = parse_version(node_version)
    return any(all(_OPS[op](have, bound) for op, bound in alt) for alt in _alternatives(engines_range))


def below_every_alternative(node_version: str, engines_range: str) -> bool:
    have = parse_version(node_version)
    lows = [bound for alt in _alternatives(engines_range) for op, bound in alt if op in (">", ">=", "=")]
    return bool(lows) and all(have < low for low in lows)


class ProvisionError(Exception):
    """A one-line, admin-readable reason this node cannot run the gateway, or the install cannot go on."""


_versions: dict[tuple[str, int, int, int, int], str] = {}  # node_version_of's answers by _binary_key
SETTLED = 2.0  # seconds since a binary last changed before its version is remembered (a file written in the
               # same clock tick as the one before it can have the same ctime)


def _binary_key(node: Path | str) -> tuple[str, int, int, int, int] | None:
    """What identifies the binary `node` runs: its real path, inode, size and change time; None for one that
    changed in the last SETTLED seconds (or cannot be looked at), whose version is asked every time."""
    try:
        real = os.path.realpath(node)
        info = os.stat(real)
    except OSError:
        return None
    if time.time() - info.st_ctime < SETTLED:
        return None
    return (real, info.st_dev, info.st_ino, info.st_size, info.st_ctime_ns)


def node_version_of(node: Path | str) -> str:
    """`node --version` without the leading v, e.g. 24.21.0; asked once per binary (the check before every
    spawn would otherwise run node twice at start and once per restart)."""
    key = _binary_key(node)
    if key is not None and key in _versions:
        return _versions[key]
    try:
        done = subprocess.run([str(node), "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ProvisionError(f"cannot run {node} --version: {exc}") from None
    version = done.stdout.strip().removeprefix("v")
    if key is not None:
        _versions[key] = version
    return version


def required_node(entry: Path) -> str:
    """The `engines.node` range of the openclaw package whose entry script is `entry` ("*" if none)."""
    try:
        package = json.loads((Path(entry).parent / "package.json").read_text())
    except (OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the gateway's package.json next to {entry}: {exc}") from None
    engines = package.get("engines") or {}
    return str(engines.get("node") or "*")


def node_problem(node: Path | str, entry: Path) -> str | None:
    """Why this node cannot run this gateway entry script, or None when it can."""
    needs, have = required_node(entry), node_version_of(node)
    if node_satisfies(have, needs):
        return None
    verdict = "too old" if below_every_alternative(have, needs) else "not supported"
    return f"node {verdict} for the gateway: needs {needs}, have {have}; run `clawsvc gateway-install`"
