"""The target release's own database preflight on the canary's copy (clawsvc/commands/upgrade/openclaw.py), with a
stand-in CLI that answers as openclaw's `database preflight DB --json` does (JSON on stdout, exit 1 for
incompatible or indeterminate, stderr noise beside it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from clawsvc.commands.upgrade import openclaw

CLI = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CLI_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
status = os.environ["FAKE_CLI_STATUS"]
print("Config health-state write failed: another OpenClaw process owns state-lifecycle", file=sys.stderr)
if status == "crash":
    print("boom: this build cannot start", file=sys.stderr)
    sys.exit(1)
print(json.dumps({"schema": "openclaw.state-schema-preflight.v1", "databasePath": args[2], "targetVersion": 17,
                  "foundVersion": 18, "issues": [], "status": status}, indent=2))
sys.exit(0 if status in ("exact", "migration-required", "startup-repairable") else 1)
"""


def run(tmp_path: Path, status: str, database: bool = True) -> tuple[openclaw.Refusal | None, list[list[str]]]:
    state = tmp_path / "state"
    (state / "state").mkdir(parents=True)
    if database:
        (state / "state" / "openclaw.sqlite").write_bytes(b"SQLite format 3\x00")
    script = tmp_path / "openclaw.py"
    script.write_text(CLI)
    log = tmp_path / "calls.log"
    env = {"PATH": os.environ["PATH"], "FAKE_CLI_LOG": str(log), "FAKE_CLI_STATUS": status}
    refused = openclaw.preflight((sys.executable, str(script)), state, env)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return refused, calls


@pytest.mark.parametrize("status", ["exact", "migration-required", "startup-repairable"])
def test_a_state_the_release_can_open_passes(tmp_path: Path, status: str) -> None:
    refused, calls = run(tmp_path, status)
    assert refused is None
    assert calls == [["database", "preflight", str(tmp_path / "state/state/openclaw.sqlite"), "--json"]]


def test_a_newer_schema_is_refused_naming_why(tmp_path: Path) -> None:
    refused, _ = run(tmp_path, "incompatible")
    assert refused == openclaw.Refusal("the state database is incompatible: found schema 18, this release supports 17",
                                       True)


def test_an_indeterminate_verdict_refuses_too(tmp_path: Path) -> None:
    refused, _ = run(tmp_path, "indeterminate")
    assert refused is not None and refused.text.startswith("the state database is indeterminate") \
        and not refused.incompatible


def test_a_release_whose_cli_cannot_answer_is_refused_with_its_last_line(tmp_path: Path) -> None:
    refused, _ = run(tmp_path, "crash")
    assert refused == openclaw.Refusal("it gave no verdict (exit 1): boom: this build cannot start", False)


def test_a_state_without_a_state_database_asks_nothing(tmp_path: Path) -> None:
    refused, calls = run(tmp_path, "incompatible", database=False)
    assert (refused, calls) == (None, [])
