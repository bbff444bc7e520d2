"""The canary's state: a copy of the service's gateway.state_dir, so whatever a new version would do to the real
state (refuse a newer database schema, fail a migration) happens to the copy first.

- SQLite databases (the header magic, or an empty *.sqlite/*.sqlite3/*.db beside its -wal) are copied with SQLite's
  backup API from a read-only connection: consistent while the live gateway writes. Their -wal/-shm/-journal
  companions are not copied (the backup holds their content). The copy's owner leases (openclaw.LEASE_TABLES) are
  released: they name the live gateway, which is alive, so the canary would refuse the state as in use
  ("Another Gateway owner lease is still active"); the gateway itself drops a dead owner's lease the same way.
- Other regular files are copied with their mode and times, never through a symlink. Not copied: clawsvc's own
  files (the gateway pidfile, the generated token), logs (*.log), the gateway's runtime files (its `tmp` dir at
  the top, `*.lock` and `*.lock.sqlite` files: they name the live gateway and would make the canary think the
  state is in use), symlinks (never followed: one could point back into the real state), sockets and FIFOs, and
  any file that vanishes (or turns into one of those) while we copy. A database the live gateway keeps locked for
  BUSY_TIMEOUT is refused.
- Bounded: more than MAX_BYTES or MAX_FILES entries is refused before anything is copied.
- The copy's openclaw.json is rewritten when it is plain JSON: every string naming a path in the real state dir
  names the same path in the copy, and `logging.file` always points into the copy, so the canary never writes
  into the service's state or its log. A JSON5 openclaw.json is left as it is (said in a warning). The rewrite
  reads it with O_NOFOLLOW and replaces it by rename, so it never reads or writes through a symlink.
- Only O_NOFOLLOW's last component is guarded: a dir on the way swapped for a symlink is followed. Whoever may
  swap dirs of the state (the service's account) must therefore run the copy (canary_copy), never root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from clawsvc import trust
from clawsvc.commands.upgrade import openclaw
from clawsvc.gateway.leftovers import PIDFILE
from clawsvc.gateway.spawnenv import GATEWAY_CONFIG

MAX_BYTES = 2 * 1024 ** 3
MAX_FILES = 50_000
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
OWN_FILES = frozenset({PIDFILE, trust.GENERATED_TOKEN_NAME})
SKIPPED_SUFFIXES = (".log", ".lock", ".lock.sqlite")
RUNTIME_DIRS = frozenset({"tmp"})  # at the top of the state dir: the gateway's temp dir (locks, transfers)
BUSY_TIMEOUT = 30.0  # seconds a backup step waits for the live gateway's write lock
BACKUP_PAGES = 1024  # pages per backup step: the writer gets the lock between steps
FREE_SPACE_MARGIN = 64 * 1024 ** 2


class StateCopyError(Exception):
    """The state cannot be copied for the canary; str() is one line naming the path and the fix."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_BYTES
    max_files: int = MAX_FILES


@dataclasses.dataclass(frozen=True)
class Copied:
    files: int
    databases: int
    bytes: int


@dataclasses.dataclass
class _Plan:
    """What the walk found to copy: relative paths of dirs and files, and their total size."""
    dirs: list[Path] = dataclasses.field(default_factory=list)
    files: list[Path] = dataclasses.field(default_factory=list)
    size: int = 0


def copy_state(source: Path, dest: Path, limits: Limits = Limits(),
               warn: Callable[[str], None] = lambda _line: None) -> Copied:
    """Copy the state dir `source` into the existing, empty, private dir `dest` (see the module's docstring);
    the copy belongs to whoever runs this. A missing source is an empty state: nothing is copied."""
    if not source.is_dir():
        return Copied(0, 0, 0)
    plan = _plan(source, limits)
    _check_space(dest, plan.size)
    for rel in plan.dirs:
        (dest / rel).mkdir(mode=0o700)
    databases = copied = 0
    for rel in plan.files:
        kind = _copy_file(source / rel, dest / rel)
        if kind is not None:
            copied += 1
            databases += kind
    try:
        openclaw.point_config_at(dest / GATEWAY_CONFIG, source, dest, warn)
    except openclaw.ConfigCopyError as exc:
        raise StateCopyError(str(exc)) from None
    return Copied(copied, databases, plan.size)


def _plan(source: Path, limits: Limits) -> _Plan:
    plan = _Plan()
    for entries, (rel, entry, companion) in enumerate(_walk(source, Path()), start=1):
        if entries > limits.max_files:
            raise StateCopyError(f"gateway.state_dir {source} holds more than {limits.max_files} files, the most "
                                 "the upgrade's canary copies; clean it up, or upgrade with the service stopped")
        if entry.is_dir(follow_symlinks=False):
            plan.dirs.append(rel)
        elif companion or _wanted(rel, entry):
            plan.files += [] if companion else [rel]
            plan.size += entry.stat(follow_symlinks=False).st_size  # a companion's pages end up in the backup
            if plan.size > limits.max_bytes:
                raise StateCopyError(f"gateway.state_dir {source} holds more than {_gib(limits.max_bytes)}, the "
                                     "most the upgrade's canary copies; clean it up, or upgrade with the service "
                                     "stopped")
    return plan


def _walk(root: Path, rel: Path) -> Iterator[tuple[Path, os.DirEntry[str], bool]]:
    """Every entry under root/rel, parents first, and whether it is a database's companion (-wal ...);
    symlinked dirs are entries, never entered."""
    try:
        with os.scandir(root / rel) as entries:
            found = sorted(entries, key=lambda e: e.name)
    except FileNotFoundError:
        return  # a dir that vanished meanwhile
    except OSError as exc:
        raise StateCopyError(f"cannot read {root / rel} to copy it for the canary: {exc.strerror}; run clawsvc "
                             "upgrade as root or as the user the service runs as") from None
    names = {entry.name for entry in found}
    for entry in found:
        if _in_runtime_dir(rel / entry.name):
            continue
        yield rel / entry.name, entry, _is_companion(entry.name, names)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root, rel / entry.name)


def _in_runtime_dir(rel: Path) -> bool:
    return rel.parts[0] in RUNTIME_DIRS


def _is_companion(name: str, names: set[str]) -> bool:
    return any(name.endswith(suffix) and name[:-len(suffix)] in names for suffix in SQLITE_COMPANIONS)


def _wanted(rel: Path, entry: os.DirEntry[str]) -> bool:
    """A regular file that is neither a log nor one of clawsvc's own files (at the top of the state dir)."""
    if not entry.is_file(follow_symlinks=False) or entry.name.endswith(SKIPPED_SUFFIXES):
        return False
    return not (entry.name in OWN_FILES and rel.parent == Path())


def _check_space(dest: Path, size: int) -> None:
    free = shutil.disk_usage(dest).free
    if size + FREE_SPACE_MARGIN > free:
        raise StateCopyError(f"{dest.parent} has {_gib(free)} free, too little for the canary's copy of the "
                             f"gateway state ({_gib(size)}); free some space or set TMPDIR to a bigger disk")


def _copy_file(src: Path, dst: Path) -> int | None:
    """1 for a database, 0 for a file, None when it vanished (or stopped being a regular file) meanwhile."""
    try:
        database = _is_sqlite(src)
        if database:
            _backup(src, dst)
        elif not _copy_regular(src, dst):
            return None
        return int(database)
    except FileNotFoundError:
        return None
    except sqlite3.Error as exc:
        if not src.exists():
            return None
        raise StateCopyError(f"cannot copy the database {src} for the canary: {exc}; try again, or upgrade with "
                             "the service stopped") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink swapped in meanwhile: never followed
            return None
        raise StateCopyError(f"cannot copy {src} for the canary: {exc.strerror or exc}") from None


def _copy_regular(src: Path, dst: Path) -> bool:
    """src's bytes, mode and times into a new dst, neither opened through a symlink; False when src is no
    longer a regular file."""
    with open(src, "rb", opener=_nofollow) as reading:
        st = os.fstat(reading.fileno())
        if not stat.S_ISREG(st.st_mode):
            return False
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as writing:
            shutil.copyfileobj(reading, writing)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    return True


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb", opener=_nofollow) as file:
        header = file.read(len(SQLITE_MAGIC))
    return header == SQLITE_MAGIC or (not header and path.name.endswith(SQLITE_SUFFIXES)
                                      and Path(f"{path}-wal").exists())


def _nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


def _backup(src: Path, dst: Path) -> None:
    mode = stat.S_IMODE(src.lstat().st_mode)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    os.close(fd)
    with contextlib.closing(sqlite3.connect(f"{src.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)) as live, \
            contextlib.closing(sqlite3.connect(dst)) as copy:
        live.backup(copy, pages=BACKUP_PAGES, progress=_deadline(src))
        openclaw.release_leases(copy)


def _deadline(src: Path) -> Callable[[int, int, int], None]:
    """A backup progress callback that gives up once the database stayed locked for BUSY_TIMEOUT (Python's
    backup would otherwise retry a locked source forever)."""
    give_up = time.monotonic() + BUSY_TIMEOUT

    def progress(status: int, _remaining: int, _total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and time.monotonic() > give_up:
            raise sqlite3.OperationalError(f"locked by another process for {BUSY_TIMEOUT:g}s")

    return progress


def _gib(size: int) -> str:
    if size >= 1024 ** 3:
        return f"{size / 1024 ** 3:.1f} GiB"
    return f"{size / 1024 ** 2:.0f} MiB" if size >= 1024 ** 2 else f"{size} bytes"
