"""The node that runs the gateway: its version against the openclaw package's `engines.node` range (|| alternatives
of comparators, x-ranges, ^, ~ and hyphen ranges; minimal on purpose, prerelease tags are ignored, but exact for the
ranges Node packages put in `engines`).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc import trust
from clawsvc.boundedrun import Account, Unfinished, clawsvc_module, run_bounded
from clawsvc.text import shown
from clawsvc.users import describe_uid

Version = tuple[int, int, int]
_PART = r"(\d+|[xX*])"
_COMPARATOR = re.compile(rf"(<=|>=|<|>|=|\^|~)?v?{_PART}(?:\.{_PART})?(?:\.{_PART})?(?:[-+][0-9A-Za-z.+-]*)?")
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
    match = _COMPARATOR.fullmatch(token)
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


VERSION_TIMEOUT = 30.0  # seconds for `node --version` (a cold disk, a loaded machine)
VERSION_CAP = 4096  # bytes of its output: a version is a dozen
PACKAGE_CAP = 1 << 20  # bytes of the package.json read (openclaw's is about 10 KiB)
CHECK_TIMEOUT = VERSION_TIMEOUT + 30.0  # the whole examination in a child, Python's own start included
CHECK_CAP = 64 * 1024
_VERSION = re.compile(r"v?\d+\.\d+\.\d+[0-9A-Za-z.+-]*")

_versions: dict[tuple[str, int, int, int, int], str] = {}  # node_version_of's answers by _binary_key
SETTLED = 2.0  # seconds since a binary last changed before its version is remembered (a file written in the
               # same clock tick as the one before it can have the same ctime)


@dataclass(frozen=True)
class NodeFacts:
    """What decides whether a node can run an openclaw entry script."""

    node_version: str  # e.g. 24.21.0
    needs: str  # the package's engines.node range, "*" when it names none
    gateway_version: str  # the package's version, "?" when it names none


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


def clean_env() -> dict[str, str]:
    """All a check's child gets: no NODE_OPTIONS, no secrets, nothing of the caller's but its PATH."""
    return {"PATH": os.environ.get("PATH") or os.defpath, "LANG": "C.UTF-8"}


def node_version_of(node: Path | str) -> str:
    """`node --version` without the leading v, e.g. 24.21.0; asked once per binary (the check before every
    spawn would otherwise run node twice at start and once per restart). Run as whoever calls: the caller
    decides who may run this node (gateway.command.vet_command)."""
    key = _binary_key(node)
    if key is not None and key in _versions:
        return _versions[key]
    try:
        done = run_bounded([str(node), "--version"], env=clean_env(), timeout=VERSION_TIMEOUT, cap=VERSION_CAP)
    except Unfinished as exc:
        raise ProvisionError(f"cannot run {node} --version: {exc}") from None
    text = done.output.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        raise ProvisionError(f"{node} --version exited with status {done.returncode}: {shown(text)}")
    if not _VERSION.fullmatch(text):
        raise ProvisionError(f"{node} --version printed {shown(text)}, not a version; is it node?")
    version = text.removeprefix("v")
    if key is not None:
        _versions[key] = version
    return version


def _package(entry: Path) -> dict[str, Any]:
    path = Path(entry).parent / "package.json"
    try:
        package = json.loads(trust.read_regular(path, "the gateway's package.json", cap=PACKAGE_CAP,
                                                nofollow=False).data)
    except (OSError, ValueError, RecursionError, trust.TrustError) as exc:
        raise ProvisionError(f"cannot read the gateway's package.json next to {entry}: {exc}") from None
    if not isinstance(package, dict):
        raise ProvisionError(f"the gateway's package.json next to {entry} is not a JSON object")
    return package


def _field(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value else default


def _needs(package: dict[str, Any]) -> str:
    engines = package.get("engines")
    return _field(engines.get("node") if isinstance(engines, dict) else None, "*")


def required_node(entry: Path) -> str:
    """The `engines.node` range of the openclaw package whose entry script is `entry` ("*" if none)."""
    return _needs(_package(entry))


def examine(node: Path | str, entry: Path) -> NodeFacts:
    """node's version and what the package of `entry` needs, read here; ProvisionError when either cannot be."""
    package = _package(entry)
    return NodeFacts(node_version_of(node), _needs(package), _field(package.get("version"), "?"))


def examine_as(account: Account, node: Path | str, entry: Path) -> NodeFacts:
    """examine() in a child running as `account` (`python -m clawsvc.gateway.node NODE ENTRY`), for root looking
    at a node or package that user could have written: nothing of theirs runs or is parsed with root's rights."""
    argv, env = clawsvc_module(__name__, str(node), str(entry))
    try:
        done = run_bounded(argv, env=env, timeout=CHECK_TIMEOUT, cap=CHECK_CAP, account=account)
    except Unfinished as exc:
        raise ProvisionError(f"cannot check {node} as {describe_uid(account.uid)}: {exc}") from None
    lines = done.output.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1])
        if done.returncode != 0:
            raise ProvisionError(str(answer["error"]))
        return NodeFacts(str(answer["node"]), str(answer["needs"]), str(answer["gateway"]))
    except (IndexError, ValueError, KeyError, TypeError):
        said = shown(lines[-1]) if lines else "nothing"
        raise ProvisionError(f"checking {node} as {describe_uid(account.uid)} failed (exit status "
                             f"{done.returncode}): it said {said}") from None


def verdict(facts: NodeFacts) -> str | None:
    """Why this node cannot run this gateway, or None when it can."""
    needs, have = facts.needs, facts.node_version
    try:
        if node_satisfies(have, needs):
            return None
        kind = "too old" if below_every_alternative(have, needs) else "not supported"
    except ValueError:
        return (f"the gateway's engines.node {shown(needs)} is not a range clawsvc understands; run "
                "`clawsvc gateway-install`")
    return f"node {kind} for the gateway: needs {needs}, have {have}; run `clawsvc gateway-install`"


def node_problem(node: Path | str, entry: Path) -> str | None:
    """Why this node cannot run this gateway entry script, or None when it can."""
    return verdict(examine(node, entry))


def main(argv: list[str]) -> int:
    """The child of examine_as: NODE ENTRY; one JSON line, and exit 0 (the facts) or 1 (the error)."""
    try:
        node, entry = argv
        facts = examine(node, Path(entry))
    except ValueError:
        print(json.dumps({"error": f"usage: python -m {__name__} NODE ENTRY"}))
        return 1
    except ProvisionError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"node": facts.node_version, "needs": facts.needs, "gateway": facts.gateway_version}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
