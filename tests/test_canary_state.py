"""The canary's copy of the service's state (clawsvc.commands.upgrade.statecopy), in process: consistent SQLite
copies while a writer holds the database, what is skipped, the limits, the openclaw.json rewrite, ownership."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsvc import trust
from clawsvc.commands.upgrade import statecopy as canary_state
from clawsvc.commands.upgrade.statecopy import Limits, StateCopyError, copy_state
from clawsvc.gateway.leftovers import PIDFILE


def tree(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    source, dest = tmp_path / "state", tmp_path / "copy"
    source.mkdir(mode=0o700)
    dest.mkdir(mode=0o700)
    return source, dest


@pytest.fixture
def busy_db(dirs: tuple[Path, Path]) -> Iterator[sqlite3.Connection]:
    """state/state/openclaw.sqlite in WAL mode with 100 committed rows and an open, uncommitted transaction."""
    (dirs[0] / "state").mkdir()
    db = sqlite3.connect(dirs[0] / "state" / "openclaw.sqlite", isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE rows (n INTEGER)")
    db.executemany("INSERT INTO rows VALUES (?)", [(n,) for n in range(100)])
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO rows VALUES (-1)")
    try:
        yield db
    finally:
        db.close()


def test_a_database_is_copied_consistently_while_a_writer_holds_it(dirs: tuple[Path, Path],
                                                                     busy_db: sqlite3.Connection) -> None:
    source, dest = dirs
    assert (source / "state" / "openclaw.sqlite-wal").exists()
    copied = copy_state(source, dest)
    assert (copied.files, copied.databases) == (1, 1)
    assert tree(dest) == ["state", "state/openclaw.sqlite"]  # no -wal/-shm companions
    with sqlite3.connect(dest / "state" / "openclaw.sqlite") as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*), min(n) FROM rows").fetchone() == (100, 0)  # committed rows only


def test_a_database_is_copied_while_a_writer_keeps_committing(dirs: tuple[Path, Path],
                                                               busy_db: sqlite3.Connection) -> None:
    source, dest = dirs
    busy_db.execute("COMMIT")
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            busy_db.execute("INSERT INTO rows VALUES (1)")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        copy_state(source, dest)
    finally:
        stop.set()
        writer.join()
    with sqlite3.connect(dest / "state" / "openclaw.sqlite") as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT count(*) FROM rows").fetchone()[0] >= 101


def test_the_copy_does_not_keep_the_live_gateway_s_leases(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    with contextlib.closing(sqlite3.connect(source / "openclaw.sqlite")) as live, live:
        live.execute("CREATE TABLE state_leases (scope TEXT, lease_key TEXT, owner TEXT)")
        live.execute("CREATE TABLE sessions (id TEXT)")
        live.execute("INSERT INTO state_leases VALUES ('gateway', 'owner', 'pid 42')")
        live.execute("INSERT INTO sessions VALUES ('s1')")
    copy_state(source, dest)
    with contextlib.closing(sqlite3.connect(dest / "openclaw.sqlite")) as copy:
        assert copy.execute("SELECT count(*) FROM state_leases").fetchone() == (0,)
        assert copy.execute("SELECT id FROM sessions").fetchall() == [("s1",)]
    with contextlib.closing(sqlite3.connect(source / "openclaw.sqlite")) as live:
        assert live.execute("SELECT owner FROM state_leases").fetchall() == [("pid 42",)]


def test_clawsvc_files_logs_symlinks_and_fifos_are_not_copied(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    source, dest = dirs
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not state")
    (source / PIDFILE).write_text("1 2 3 4\n")
    (source / trust.GENERATED_TOKEN_NAME).write_text("the-service-token\n")
    (source / "gateway.log").write_text("log\n")
    (source / "link.txt").symlink_to(outside / "secret.txt")
    (source / "linked-dir").symlink_to(outside)
    os.mkfifo(source / "pipe")
    (source / "agents" / "main").mkdir(parents=True)
    (source / "agents" / "main" / "notes.md").write_text("kept")
    (source / "agents" / "main" / "notes.md").chmod(0o640)
    (source / "agents" / "main" / "run.log").write_text("log\n")
    (source / "agents" / PIDFILE).write_text("nested: not clawsvc's")  # only the top-level names are ours
    (source / "tmp" / "openclaw-0").mkdir(parents=True)  # the live gateway's runtime dir
    (source / "tmp" / "openclaw-0" / "gateway.state.lock").write_text('{"pid": 1}')
    (source / "agents" / "gateway.1234abcd.lock.sqlite").write_bytes(b"")
    (source / "agents" / "main" / "state.lock").write_text('{"pid": 1}')
    copied = copy_state(source, dest)
    assert tree(dest) == ["agents", "agents/clawsvc-gateway.pid", "agents/main", "agents/main/notes.md"]
    assert copied.files == 2
    assert (dest / "agents" / "main" / "notes.md").read_text() == "kept"
    assert stat.S_IMODE((dest / "agents" / "main" / "notes.md").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "agents").stat().st_mode) == 0o700


def test_a_database_locked_by_the_live_gateway_is_refused_in_bounded_time(
        dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary_state, "BUSY_TIMEOUT", 1.0)
    source, dest = dirs
    with contextlib.closing(sqlite3.connect(source / "held.db", isolation_level=None)) as holder:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("CREATE TABLE rows (n INTEGER)")
        holder.execute("INSERT INTO rows VALUES (1)")  # takes the exclusive lock and keeps it
        started = time.monotonic()
        with pytest.raises(StateCopyError) as refused:
            copy_state(source, dest)
        assert time.monotonic() - started < 20
    assert f"cannot copy the database {source / 'held.db'} for the canary: locked by another process" in str(
        refused.value)


def test_a_missing_state_dir_is_an_empty_state(tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    dest.mkdir()
    assert copy_state(tmp_path / "never-started", dest).files == 0
    assert tree(dest) == []


@pytest.mark.parametrize("limits, named", [(Limits(max_files=5), "more than 5 files"),
                                           (Limits(max_bytes=1000), "more than 1000 bytes")])
def test_a_state_over_the_limits_is_refused_before_copying(dirs: tuple[Path, Path], limits: Limits,
                                                           named: str) -> None:
    source, dest = dirs
    for number in range(6):
        (source / f"file-{number}").write_bytes(b"x" * 300)
    with pytest.raises(StateCopyError) as refused:
        copy_state(source, dest, limits=limits)
    assert named in str(refused.value) and "\n" not in str(refused.value)
    assert str(source) in str(refused.value)
    assert tree(dest) == []


def test_openclaw_json_names_the_copy_not_the_service_state(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    config = {"gateway": {"mode": "local", "port": 18789},
              "logging": {"file": str(source / "gateway.log"), "level": "info"},
              "agents": {"defaults": {"workspace": str(source / "workspace")}, "other": str(source) + "-not-it"}}
    (source / "openclaw.json").write_text(json.dumps(config))
    copy_state(source, dest)
    copied = json.loads((dest / "openclaw.json").read_text())
    assert copied["logging"] == {"file": str(dest / "gateway.log"), "level": "info"}
    assert copied["agents"] == {"defaults": {"workspace": str(dest / "workspace")}, "other": str(source) + "-not-it"}
    assert copied["gateway"] == config["gateway"]
    assert json.loads((source / "openclaw.json").read_text()) == config


def test_a_logging_file_outside_the_state_also_moves_into_the_copy(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    source, dest = dirs
    (source / "openclaw.json").write_text(json.dumps({"logging": {"file": str(tmp_path / "var-log" / "gw.log")}}))
    copy_state(source, dest)
    assert json.loads((dest / "openclaw.json").read_text()) == {"logging": {"file": str(dest / "gw.log")}}


def test_a_json5_openclaw_json_is_left_as_it_is_with_a_warning(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    text = '{\n  // JSON5\n  logging: {file: "/somewhere/gateway.log"},\n}\n'
    (source / "openclaw.json").write_text(text)
    warnings: list[str] = []
    copy_state(source, dest, warn=warnings.append)
    assert (dest / "openclaw.json").read_text() == text
    assert len(warnings) == 1 and "logging.file is left as it is" in warnings[0]


def test_a_symlink_in_place_of_the_copy_s_openclaw_json_is_not_written_through(dirs: tuple[Path, Path],
                                                                                tmp_path: Path) -> None:
    """Something swapped the copy's openclaw.json for a symlink before the rewrite: neither read nor written."""
    source, dest = dirs
    (source / "notes.md").write_text("state")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"logging": {"file": "/var/log/elsewhere.log"}}))
    (dest / "openclaw.json").symlink_to(elsewhere)
    with pytest.raises(StateCopyError) as refused:
        copy_state(source, dest)
    assert json.loads(elsewhere.read_text()) == {"logging": {"file": "/var/log/elsewhere.log"}}
    assert (dest / "openclaw.json").is_symlink()
    assert f"{dest / 'openclaw.json'} is a symbolic link" in str(refused.value) and "\n" not in str(refused.value)


def test_the_rewritten_openclaw_json_keeps_its_mode_and_leaves_no_temp_file(dirs: tuple[Path, Path]) -> None:
    source, dest = dirs
    (source / "openclaw.json").write_text(json.dumps({"agents": {"workspace": str(source / "ws")}}))
    (source / "openclaw.json").chmod(0o640)
    copy_state(source, dest)
    assert json.loads((dest / "openclaw.json").read_text()) == {"agents": {"workspace": str(dest / "ws")}}
    assert stat.S_IMODE((dest / "openclaw.json").lstat().st_mode) == 0o640
    assert tree(dest) == ["openclaw.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_the_canary_account_gets_only_its_copy_s_dir_while_it_copies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compromised gateway runs as the canary's account: it copies (canary_copy) into scratch/state, its own,
    through the scratch dir (0711, root's); HOME and TMPDIR stay root's until the copy is in."""
    from clawsvc.commands.upgrade import canary
    from clawsvc.config import Config

    nobody = canary.RunAs(65534, 65534, "nobody")
    seen: dict[str, dict[str, tuple[int, int]]] = {}

    def owners(scratch: Path) -> dict[str, tuple[int, int]]:
        return {path.name: (path.stat().st_uid, stat.S_IMODE(path.stat().st_mode))
                for path in (scratch, scratch / "state", scratch / "home", scratch / "tmp")}

    def copying(uid: int, gid: int, source: Path, dest: Path, warn: object) -> canary_state.Copied:
        assert (uid, gid) == (65534, 65534)
        seen["while copying"] = owners(dest.parent)
        return canary_state.Copied(0, 0, 0)

    class Stop(Exception):
        pass

    def spawning(config: Config, *args: object) -> None:
        seen["at the spawn"] = owners(config.gateway.state_dir.parent)
        raise Stop

    monkeypatch.setattr(canary, "service_account", lambda config: nobody)
    monkeypatch.setattr(canary.trust, "judged_as_the_service", contextlib.nullcontext)
    monkeypatch.setattr(canary, "copy_state_as", copying)
    monkeypatch.setattr(canary, "GatewayProcess", spawning)
    monkeypatch.setattr(canary.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(Stop):
        canary.run_canary(Config(), ("/bin/true",))
    me = os.geteuid()
    scratch = next(iter(seen["while copying"]))
    assert seen["while copying"] == {scratch: (me, 0o711), "state": (65534, 0o700), "home": (me, 0o700),
                                     "tmp": (me, 0o700)}
    assert seen["at the spawn"] == {scratch: (65534, 0o700), "state": (65534, 0o700), "home": (65534, 0o700),
                                    "tmp": (65534, 0o700)}
    assert list(tmp_path.glob(f"{canary.SCRATCH_PREFIX}*")) == []
