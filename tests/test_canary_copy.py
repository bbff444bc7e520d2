"""The canary's state copy run as the service's account (clawsvc.commands.upgrade.copy_as), as root upgrading a system
service would: uid 65534 (nobody) plays the service account, owning the live state; a root-only dir plays
/root/.ssh. The copy must read only what that account can read, be its own, and end (one line) when bounded."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from another_user import needs_another_user
from waiting import poll

from clawsvc.commands.upgrade.copy_as import copy_state_as
from clawsvc.commands.upgrade.statecopy import Limits, StateCopyError

NOBODY = 65534
SECRET = "root-only-secret-0123456789"
CHILD_BOUND = 120.0  # seconds: a bound for a child copy on a loaded machine, not a measurement

pytestmark = needs_another_user


def give(root: Path) -> None:
    """root and everything under it to NOBODY, as the service account owns its state."""
    for path in [root, *root.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    """(state, copy), both NOBODY's 0700, in a dir NOBODY may pass through (pytest's tmp_path is root's 0700)."""
    shared = Path(tempfile.mkdtemp(prefix="clawsvc-test-canary-copy-"))
    try:
        shared.chmod(0o711)
        source, dest = shared / "state", shared / "copy"
        for path in (source, dest):
            path.mkdir(mode=0o700)
            os.chown(path, NOBODY, NOBODY)
        yield source, dest
    finally:
        shutil.rmtree(shared)


@pytest.fixture
def root_only(dirs: tuple[Path, Path]) -> Path:
    """A root 0700 dir (think /root/.ssh) holding notes.txt with SECRET, beside the state."""
    secret = dirs[0].parent / "root-only"
    secret.mkdir(mode=0o700)
    (secret / "notes.txt").write_text(SECRET)
    return secret


def copier_processes(dest: Path) -> list[int]:
    """Pids of processes whose command line names dest (the copy's child)."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and str(dest).encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                found.append(int(proc.name))
    return found


def test_the_copy_is_made_by_the_account_and_names_the_copy(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    with contextlib.closing(sqlite3.connect(source / "openclaw.sqlite")) as db, db:
        db.execute("CREATE TABLE sessions (id TEXT)")
        db.execute("INSERT INTO sessions VALUES ('s1')")
    (source / "agents").mkdir()
    (source / "agents" / "notes.md").write_text("kept")
    (source / "openclaw.json").write_text(json.dumps({"logging": {"file": str(source / "gw.log")},
                                                      "agents": {"workspace": str(source / "agents")}}))
    give(source)
    copied = copy_state_as(NOBODY, NOBODY, source, dest)
    assert (copied.files, copied.databases) == (3, 1)
    assert tree(dest) == ["agents", "agents/notes.md", "openclaw.json", "openclaw.sqlite"]
    assert {(path.lstat().st_uid, path.lstat().st_gid) for path in dest.rglob("*")} == {(NOBODY, NOBODY)}
    assert json.loads((dest / "openclaw.json").read_text()) == {"logging": {"file": str(dest / "gw.log")},
                                                                "agents": {"workspace": str(dest / "agents")}}
    with contextlib.closing(sqlite3.connect(dest / "openclaw.sqlite")) as copy:
        assert copy.execute("SELECT id FROM sessions").fetchall() == [("s1",)]
    assert copier_processes(dest) == []


def test_the_account_s_warnings_reach_the_caller(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    (source / "openclaw.json").write_text('{\n  // JSON5\n  logging: {file: "/somewhere/gateway.log"},\n}\n')
    give(source)
    warnings: list[str] = []
    copy_state_as(NOBODY, NOBODY, source, dest, warn=warnings.append)
    assert len(warnings) == 1 and "logging.file is left as it is" in warnings[0]


def test_a_dir_swapped_for_a_symlink_to_root_only_files_is_not_read(dirs: tuple[Path, Path],
                                                                    root_only: Path) -> None:
    """The account swaps state/b for a symlink to a root-only dir after the copy's walk planned b/notes.txt: the
    copy (which O_NOFOLLOW alone would not stop, it follows b) cannot read it, and fails instead."""
    source, dest = dirs
    (source / "b").mkdir()
    (source / "b" / "notes.txt").write_text("state")
    failed: list[BaseException] = []

    def copy() -> None:
        try:
            copy_state_as(NOBODY, NOBODY, source, dest)
        except StateCopyError as exc:
            failed.append(exc)

    copier = threading.Thread(target=copy)
    with contextlib.closing(sqlite3.connect(source / "a.db", isolation_level=None)) as holder:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("CREATE TABLE rows (n INTEGER)")
        holder.execute("INSERT INTO rows VALUES (1)")  # the copy waits on a.db, after its walk, until we close
        give(source)
        copier.start()
        try:
            poll(lambda: (dest / "a.db").exists(), CHILD_BOUND, "the copy to wait on a.db")
            (source / "b").rename(source / "b-planned")
            (source / "b").symlink_to(root_only)
        finally:
            holder.close()
            copier.join(CHILD_BOUND)
    assert not copier.is_alive()
    assert len(failed) == 1
    assert f"cannot copy {source / 'b' / 'notes.txt'} for the canary: Permission denied" == str(failed[0])
    assert all(SECRET not in path.read_text(errors="replace") for path in dest.rglob("*") if path.is_file())
    assert copier_processes(dest) == []


def test_a_state_the_account_cannot_read_fails_as_one_line(dirs: tuple[Path, Path], root_only: Path) -> None:
    """The plain case of the same: a state dir that is (now) a symlink to root's files is not copied as root."""
    source, dest = dirs
    source.rmdir()
    source.symlink_to(root_only)
    with pytest.raises(StateCopyError) as refused:
        copy_state_as(NOBODY, NOBODY, source, dest)
    assert str(refused.value).startswith(f"cannot read {source} to copy it for the canary: Permission denied")
    assert "\n" not in str(refused.value)
    assert tree(dest) == []


def test_a_state_over_the_limits_fails_as_the_in_process_copy_does(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    for number in range(3):
        (source / f"file-{number}").write_text("x")
    give(source)
    with pytest.raises(StateCopyError) as refused:
        copy_state_as(NOBODY, NOBODY, source, dest, limits=Limits(max_files=2))
    assert str(refused.value).startswith(f"gateway.state_dir {source} holds more than 2 files, the most the "
                                         "upgrade's canary copies; clean it up")
    assert "\n" not in str(refused.value)
    assert tree(dest) == []


def test_a_copy_over_its_timeout_is_stopped(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    with contextlib.closing(sqlite3.connect(source / "held.db", isolation_level=None)) as holder:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("CREATE TABLE rows (n INTEGER)")
        holder.execute("INSERT INTO rows VALUES (1)")  # held: the copy waits BUSY_TIMEOUT (30 s) for it
        give(source)
        started = time.monotonic()
        with pytest.raises(StateCopyError) as stopped:
            copy_state_as(NOBODY, NOBODY, source, dest, timeout=2.0)
        assert time.monotonic() - started < 25
    assert str(stopped.value) == (f"copying {source} for the canary as user nobody (uid 65534) took over 2s and "
                                  "was stopped; upgrade with the service stopped, or clean up its state")
    assert copier_processes(dest) == []
