"""The stable paths a config names for a gateway installed by `gateway-install`, and switching them.

PREFIX/current -> openclaw-<ver> (and PREFIX/previous -> the one before it) are relative symlinks. Each
openclaw-<ver> holds a `node` link to the Node it was installed with, so the config's `gateway.command`,
[PREFIX/current/node, PREFIX/current/node_modules/openclaw/openclaw.mjs], follows a switch without the YAML being
rewritten; the gateway picks up the new target at its next start (a restart or reload through the service).
"""

from __future__ import annotations

import os
from pathlib import Path

CURRENT = "current"
PREVIOUS = "previous"
NODE_LINK = "node"
ENTRY = Path("node_modules/openclaw/openclaw.mjs")
VERSION_DIR_PREFIX = "openclaw-"


def stable_command(prefix: Path) -> tuple[str, str]:
    """The `gateway.command` argv that always runs the version `current` points at."""
    current = prefix / CURRENT
    return (str(current / NODE_LINK), str(current / ENTRY))


def version_dir(prefix: Path, version: str) -> Path:
    return prefix / f"{VERSION_DIR_PREFIX}{version}"


def version_command(prefix: Path, version: str) -> tuple[str, str]:
    """The argv that runs one installed version directly (its own `node` link), whatever `current` says."""
    path = version_dir(prefix, version)
    return (str(path / NODE_LINK), str(path / ENTRY))


def linked_version(prefix: Path, name: str = CURRENT) -> str | None:
    """The openclaw version PREFIX/<name> points at, or None when the link is absent or not one of ours."""
    try:
        target = os.readlink(prefix / name)
    except OSError:
        return None
    if "/" in target or not target.startswith(VERSION_DIR_PREFIX):
        return None
    return target.removeprefix(VERSION_DIR_PREFIX) or None


def ensure_node_link(version_path: Path, node: Path) -> None:
    """Give an openclaw-<ver> directory its `node` link (relative, so the prefix can move) unless it has one."""
    link = version_path / NODE_LINK
    if link.is_symlink():
        return
    _replace_link(link, os.path.relpath(node, version_path))


def point(prefix: Path, name: str, version: str) -> None:
    """Atomically make PREFIX/<name> point at openclaw-<version> (rename over the old link)."""
    _replace_link(prefix / name, f"{VERSION_DIR_PREFIX}{version}")


def switch(prefix: Path, current: str, previous: str | None) -> None:
    """PREFIX/previous -> openclaw-<previous> (removed when None), then PREFIX/current -> openclaw-<current>.
    Each step is one atomic rename; in between, both links still name installed versions."""
    if previous is None:
        (prefix / PREVIOUS).unlink(missing_ok=True)
    else:
        point(prefix, PREVIOUS, previous)
    point(prefix, CURRENT, current)


def prefix_of(command: tuple[str, ...]) -> Path | None:
    """The prefix whose stable command `command` is (PREFIX/current/node + entry), or None for any other."""
    if len(command) < 2 or not os.path.isabs(command[0]):
        return None
    prefix = Path(command[0]).parent.parent
    return prefix if uses_stable_paths(command, prefix) else None


def uses_stable_paths(command: tuple[str, ...], prefix: Path) -> bool:
    """Whether a config's gateway.command is this prefix's stable command (so a switch reaches the service)."""
    return tuple(command[:2]) == stable_command(prefix)


def _replace_link(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
