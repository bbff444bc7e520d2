"""What the upgrade knows about OpenClaw itself, in one place: the quiet environment its canary runs in, the owner
leases and the openclaw.json paths of a copied state, the target release's own database preflight, and the words
it refuses a state a newer release migrated with.

The database preflight (the gateway's supervisor contract: docs/cli/gateway/restart-and-supervision.md) runs the
target release's CLI on the canary's consistent copy of the state database, before the canary starts (which would
migrate the copy): `openclaw database preflight STATE_DIR/state/openclaw.sqlite --json`. Its JSON `status` is the
verdict: exact, startup-repairable and migration-required are fine; incompatible and indeterminate refuse the
upgrade. Agent databases are not its business (`preflight-agent` refuses an older one the gateway migrates at
start, seen with 2026.9.6 on 2026.9.5's): the canary's start on the copy judges those."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc import trust
from clawsvc.boundedrun import Unfinished, run_bounded
from clawsvc.gateway.spawnenv import GATEWAY_CONFIG
from clawsvc.text import cut, printable

CANARY_ENV = {key: "1" for key in (
    "OPENCLAW_SKIP_CHANNELS", "OPENCLAW_SKIP_PROVIDERS", "OPENCLAW_SKIP_CRON", "OPENCLAW_SKIP_GMAIL_WATCHER",
    "OPENCLAW_SKIP_CANVAS_HOST", "OPENCLAW_SKIP_BROWSER_CONTROL_SERVER", "OPENCLAW_SKIP_STARTUP_MODEL_PREWARM",
    "OPENCLAW_NO_AUTO_UPDATE", "OPENCLAW_DISABLE_BONJOUR")}
LEASE_TABLES = ("state_leases", "agent_database_leases")  # OpenClaw 2026.9's process leases on its state
CONFIG_CAP = 16 * 1024 ** 2  # the most of openclaw.json the rewrite reads
SCHEMA_TOO_NEW = "are newer than this build"  # the gateway's refusal of a state a newer release migrated
STATE_DATABASE = Path("state") / "openclaw.sqlite"
FINE = ("exact", "startup-repairable", "migration-required")
PREFLIGHT_TIMEOUT = 120.0  # a cold CLI start: 2-5 s here idle, 36 s seen under load
PREFLIGHT_CAP = 256 * 1024


class ConfigCopyError(Exception):
    """The copy's openclaw.json cannot be read safely; str() is one line."""


def release_leases(copy: sqlite3.Connection) -> None:
    """Drop the owner leases of a copied database: they name the live gateway, which is alive, so the canary would
    refuse the state as in use ("Another Gateway owner lease is still active")."""
    tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    with copy:
        for table in LEASE_TABLES:
            if table in tables:
                copy.execute(f"DELETE FROM {table}")  # a fixed name, not input


def point_config_at(path: Path, source: Path, dest: Path, warn: Callable[[str], None]) -> None:
    """The copy's openclaw.json, when it is plain JSON: every string naming a path in the real state dir names the
    same path in the copy, and `logging.file` points into the copy. Read with O_NOFOLLOW, replaced by rename."""
    try:
        found = trust.read_regular(path, f"the canary's copy of {GATEWAY_CONFIG}", cap=CONFIG_CAP, nofollow=True)
    except FileNotFoundError:
        return
    except trust.TrustError as exc:  # a symlink, FIFO ... swapped in: never followed
        raise ConfigCopyError(str(exc)) from None
    except OSError as exc:
        raise ConfigCopyError(f"cannot read the canary's copy {path}: {exc.strerror}; try the upgrade again") from None
    try:
        config = json.loads(found.data)
    except ValueError:
        if b"logging" in found.data:
            warn(f"the canary's copy of {GATEWAY_CONFIG} is not plain JSON, so its logging.file is left as it is "
                 "(the canary may log where the service does)")
        return
    config = _moved(config, str(source.absolute()), str(dest))
    if isinstance(config, dict) and isinstance(config.get("logging"), dict) and "file" in config["logging"]:
        config["logging"]["file"] = str(dest / Path(str(config["logging"]["file"])).name)
    _replace(path, (json.dumps(config, indent=2) + "\n").encode(), stat.S_IMODE(found.st.st_mode))


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write path anew through a temp file in its dir and a rename: whatever path is (a symlink), it is replaced,
    never written through."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL | O_NOFOLLOW
    try:
        with open(fd, "wb") as file:
            file.write(data)
            os.fchmod(fd, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _moved(value: Any, source: str, dest: str) -> Any:
    """`value` with every string naming `source` or a path under it naming the same path under `dest`."""
    if isinstance(value, dict):
        return {key: _moved(item, source, dest) for key, item in value.items()}
    if isinstance(value, list):
        return [_moved(item, source, dest) for item in value]
    if isinstance(value, str) and (value == source or value.startswith(source.rstrip("/") + "/")):
        return dest + value[len(source.rstrip("/")):]
    return value


def newer_state(lines: Sequence[str]) -> bool:
    """Whether the gateway's last lines refuse a state a newer release migrated."""
    return any(SCHEMA_TOO_NEW in line for line in lines)


def schema_hint(version: str, state_dir: Path) -> str:
    """What to do when `version` refuses the state because a newer release migrated it."""
    return (f"the service's state was migrated by a newer release than {version}; going back to {version} needs "
            f"that state ({state_dir}) restored from a backup made before the upgrade")


@dataclass(frozen=True)
class Refusal:
    text: str  # one line: which database, the verdict, why
    incompatible: bool  # a schema newer than the release supports (a downgrade across a migration)


def preflight(command: Sequence[str], state: Path, env: Mapping[str, str]) -> Refusal | None:
    """The target release's verdict on the copied `state`'s state database: a Refusal, or None when it can open
    it (or there is none yet). `command` runs the target release's CLI (node + entry, or a setpriv that runs it as
    the service user); `env` is the canary's."""
    database = state / STATE_DATABASE
    if not database.is_file() or database.is_symlink():
        return None
    argv = [*command, "database", "preflight", str(database), "--json"]
    try:
        done = run_bounded(argv, env=env, timeout=PREFLIGHT_TIMEOUT, cap=PREFLIGHT_CAP)
    except Unfinished as exc:
        return Refusal(f"it did not finish ({exc})", False)
    verdict = _verdict(done.output)
    status = verdict.get("status")
    if not isinstance(status, str):
        last = done.output.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return Refusal(printable(cut(f"it gave no verdict (exit {done.returncode}): {last[0]}", 400)), False)
    if status in FINE and done.returncode == 0:
        return None
    reason = str(verdict.get("reason") or f"found schema {verdict.get('foundVersion')}, this release supports "
                                           f"{verdict.get('targetVersion')}").splitlines()[0]
    return Refusal(printable(cut(f"the state database is {status}: {reason}", 400)), status == "incompatible")


def _verdict(output: bytes) -> dict[str, Any]:
    """The JSON object the CLI printed (stderr lines may come before or after it in the one pipe)."""
    text = output.decode("utf-8", "replace")
    start = text.find("{")
    while start != -1:
        try:
            found, _ = json.JSONDecoder().raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        return found if isinstance(found, dict) else {}
    return {}
