"""The target release's own database preflight on the canary's copy (clawsvc/commands/upgrade/openclaw.py), with a
stand-in CLI that answers as openclaw's `database preflight[-agent] DB --json` does (JSON on stdout, exit 1 for
incompatible or indeterminate, stderr noise beside it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from clawsvc.commands.upgrade import openclaw

CLI = """
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_CLI_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
verdicts = json.loads(os.environ["FAKE_CLI_VERDICTS"])
status = verdicts[os.path.basename(os.path.dirname(args[2]))]
print("Config health-state write failed: another OpenClaw process owns state-lifecycle", file=sys.stderr)
answer = {"schema": "openclaw.state-schema-preflight.v1", "databasePath": args[2], "targetVersion": 17,
          "foundVersion": 18, "issues": [], "status": status}
if status == "incompatible" and "--agent-id" in args:
    answer["reason"] = "This OpenClaw build cannot open your existing data.\\nmore lines"
print(json.dumps(answer, indent=2))
sys.exit(0 if status in ("exact", "migration-required") else 1)
"""


def state_with(tmp_path: Path, *agents: str) -> Path:
    state = tmp_path / "state"
    (state / "state").mkdir(parents=True)
    (state / "state" / "openclaw.sqlite").write_bytes(b"SQLite format 3\x00")
    for agent in agents:
        (state / "agents" / agent / "agent").mkdir(parents=True)
        (state / "agents" / agent / "agent" / "openclaw-agent.sqlite").write_bytes(b"SQLite format 3\x00")
    return state


def run(tmp_path: Path, state: Path, verdicts: dict[str, str]) -> tuple[list[openclaw.Refusal], list[list[str]]]:
    script = tmp_path / "openclaw.py"
    script.write_text(CLI)
    log = tmp_path / "calls.log"
    env = {"PATH": os.environ["PATH"], "FAKE_CLI_LOG": str(log), "FAKE_CLI_VERDICTS": json.dumps(verdicts)}
    refused = openclaw.preflight((sys.executable, str(script)), state, env)
    return refused, [json.loads(line) for line in log.read_text().splitlines()]


def test_every_database_of_the_copy_is_asked_and_fine_verdicts_pass(tmp_path: Path) -> None:
    state = state_with(tmp_path, "main", "work")
    refused, calls = run(tmp_path, state, {"state": "exact", "agent": "migration-required"})
    assert refused == []
    assert calls == [
        ["database", "preflight", str(state / "state" / "openclaw.sqlite"), "--json"],
        ["database", "preflight-agent", str(state / "agents/main/agent/openclaw-agent.sqlite"), "--agent-id", "main",
         "--json"],
        ["database", "preflight-agent", str(state / "agents/work/agent/openclaw-agent.sqlite"), "--agent-id", "work",
         "--json"]]


def test_a_newer_schema_is_refused_naming_the_database_and_why(tmp_path: Path) -> None:
    refused, _ = run(tmp_path, state_with(tmp_path, "main"), {"state": "incompatible", "agent": "incompatible"})
    assert [(r.text, r.incompatible) for r in refused] == [
        ("the state database: incompatible: found schema 18, this release supports 17", True),
        ("agent main's database: incompatible: This OpenClaw build cannot open your existing data.", True)]


def test_an_indeterminate_verdict_refuses_too(tmp_path: Path) -> None:
    refused, _ = run(tmp_path, state_with(tmp_path), {"state": "indeterminate"})
    assert [(r.text.split(":")[0:2], r.incompatible) for r in refused] == [(["the state database", " indeterminate"],
                                                                           False)]


def test_a_state_without_databases_asks_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert openclaw.preflight(("/nonexistent/openclaw",), tmp_path / "empty", {}) == []
