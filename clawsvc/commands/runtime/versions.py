"""Keeping the last two versions of a gateway-install prefix: what `current` and `previous` point at stays, every
other openclaw-<v> goes, and so does each node-<v> no remaining version's marker names."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from clawsvc.commands.runtime import links as gateway_links
from clawsvc.commands.runtime.provision import MARKER


def prune(prefix: Path, keep: set[str], report: Callable[[str], None]) -> list[str]:
    """Remove every openclaw-<v> but `keep` (and what `current`/`previous` point at), then each node-<v> no
    remaining version's marker names; a symlink to a directory elsewhere is never followed into. Caller holds
    locked(prefix). Returns the directory names removed."""
    keep = keep | {v for name in (gateway_links.CURRENT, gateway_links.PREVIOUS)
                   if (v := gateway_links.linked_version(prefix, name))}
    gone = [path for path in prefix.glob(f"{gateway_links.VERSION_DIR_PREFIX}*")
            if path.is_dir() and not path.is_symlink()
            and path.name.removeprefix(gateway_links.VERSION_DIR_PREFIX) not in keep]
    for path in gone:
        _remove(prefix, path, report)
    used = {_node_dir(path) for path in prefix.glob(f"{gateway_links.VERSION_DIR_PREFIX}*")}
    nodes = [path for path in prefix.glob("node-*")
             if path.is_dir() and not path.is_symlink() and path.name not in used]
    for path in nodes:
        _remove(prefix, path, report)
    return [path.name for path in [*gone, *nodes]]


def _node_dir(version_path: Path) -> str | None:
    """The node-<v> directory an openclaw-<v>'s marker names (its first path part)."""
    try:
        return Path(json.loads((version_path / MARKER).read_text())["node"]).parts[0]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def _remove(prefix: Path, path: Path, report: Callable[[str], None]) -> None:
    """Renamed out of the way first, so an interrupted removal leaves no half directory under a real name."""
    stale = Path(tempfile.mkdtemp(prefix=f".{path.name}.stale-", dir=prefix))
    path.rename(stale / path.name)
    shutil.rmtree(stale, ignore_errors=True)
    report(f"removed {path}, no longer current or previous")
