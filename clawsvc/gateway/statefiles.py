"""Who owns what is in the gateway's state dir. The gateway runs as the service's user and must be able to write
everything there; a file another user made (`openclaw config set` run as root with the service's state dir leaves
openclaw.json root's, 0600) makes it log EACCES while it seems to run, and its next start exit 78.

`foreign` lists what does not belong to the owner (walked without following a link, bounded); `give_back` is
`doctor --fix` as root: each such entry is handed to the owner through a descriptor opened with O_NOFOLLOW (a
directory) or re-checked after opening (a regular file with a single link), a symlink itself is changed with
lchown, and anything else (a device, a FIFO, a file with more than one link, whose other names could lie outside
the state dir) is left as it is and named. Nothing is read, parsed or followed."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clawsvc import pathwalk

MAX_ENTRIES = 200_000  # a state dir with more is not walked to the end (doctor says so)
MAX_DEPTH = 64
SHOWN = 3  # entries named in a one-line summary
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR = _OPEN | os.O_DIRECTORY


@dataclass
class Scan:
    foreign: list[tuple[Path, int]] = field(default_factory=list)  # (path, its owner's uid)
    walked: int = 0
    complete: bool = True


def _entries(path: Path, depth: int) -> Iterator[tuple[Path, os.stat_result, bool]]:
    """(path, lstat, is a real directory) of everything below `path`, depth first, never through a link."""
    try:
        with os.scandir(path) as listing:
            found = list(listing)
    except OSError:
        return
    for entry in found:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        is_dir = stat.S_ISDIR(st.st_mode)
        yield Path(entry.path), st, is_dir
        if is_dir and depth < MAX_DEPTH:
            yield from _entries(Path(entry.path), depth + 1)


def foreign(state_dir: Path, owner: int, limit: int = MAX_ENTRIES) -> Scan:
    """What below `state_dir` (itself included) is not owned by `owner`; a missing dir has nothing."""
    scan = Scan()
    try:
        top = os.lstat(state_dir)
    except OSError:
        return scan
    if top.st_uid != owner:
        scan.foreign.append((state_dir, top.st_uid))
    if not stat.S_ISDIR(top.st_mode):
        return scan
    for path, st, _ in _entries(state_dir, 1):
        scan.walked += 1
        if scan.walked > limit:
            scan.complete = False
            break
        if st.st_uid != owner:
            scan.foreign.append((path, st.st_uid))
    return scan


def summary(scan: Scan, owner_name: str) -> str | None:
    """One line naming what is not the owner's, or None when everything is."""
    if not scan.foreign:
        return None
    named = ", ".join(f"{path} (uid {uid})" for path, uid in scan.foreign[:SHOWN])
    more = f" and {len(scan.foreign) - SHOWN} more" if len(scan.foreign) > SHOWN else ""
    return f"{len(scan.foreign)} file(s) in the state dir are not owned by {owner_name}: {named}{more}"


@dataclass
class Fixed:
    changed: list[Path] = field(default_factory=list)
    left: list[tuple[Path, str]] = field(default_factory=list)  # (path, why it was not changed)


def give_back(state_dir: Path, uid: int, gid: int) -> Fixed:
    """Hand everything below `state_dir` (itself included) that `uid` does not own to uid:gid; never follows a
    link (on the way to `state_dir` either: pass it resolved), never changes what is not a directory, a single-link
    regular file or a symlink. OSError (ELOOP, ENOTDIR) for a link on the way."""
    fixed = Fixed()
    fd = pathwalk.open_dir_nofollow(str(state_dir.absolute()))
    try:
        _take(fd, state_dir, uid, gid, fixed)
        _walk(fd, state_dir, uid, gid, fixed, 1)
    finally:
        os.close(fd)
    return fixed


def _take(fd: int, path: Path, uid: int, gid: int, fixed: Fixed) -> None:
    st = os.fstat(fd)  # the very thing opened, whatever the name pointed at before
    if st.st_uid == uid:
        return
    if stat.S_ISDIR(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
        os.fchown(fd, uid, gid)
        fixed.changed.append(path)
    elif stat.S_ISREG(st.st_mode):
        fixed.left.append((path, f"it has {st.st_nlink} links"))
    else:
        fixed.left.append((path, "it is not a regular file or a directory"))


def _walk(dir_fd: int, path: Path, uid: int, gid: int, fixed: Fixed, depth: int) -> None:
    with os.scandir(dir_fd) as listing:
        names = [entry.name for entry in listing]
    for name in names:
        child = path / name
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid != uid:
                os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
                fixed.changed.append(child)
            continue
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            if st.st_uid != uid:
                fixed.left.append((child, "it is not a regular file or a directory"))
            continue
        try:
            fd = os.open(name, _DIR if stat.S_ISDIR(st.st_mode) else _OPEN, dir_fd=dir_fd)
        except OSError as exc:  # swapped for a link or something else since: left alone
            fixed.left.append((child, exc.strerror or "it changed while looked at"))
            continue
        try:
            _take(fd, child, uid, gid, fixed)
            if stat.S_ISDIR(os.fstat(fd).st_mode) and depth < MAX_DEPTH:
                with contextlib.suppress(OSError):
                    _walk(fd, child, uid, gid, fixed, depth + 1)
        finally:
            os.close(fd)
