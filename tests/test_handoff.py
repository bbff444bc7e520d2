"""Consuming a fresh-process restart's handoff with the gateway's own CLI (clawsvc/gateway/handoff.py), against a
stand-in CLI that answers as openclaw 2026.9.6's `gateway restart-handoff consume --expected-pid PID --json` does."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from clawsvc.config import Config, GatewayConfig
from clawsvc.gateway import handoff

CLI = """
import json, os, sys
out = os.environ["FAKE_CLI_RECORD"]
with open(out, "w") as f:
    json.dump({"argv": sys.argv[1:], "token": os.environ.get("OPENCLAW_GATEWAY_TOKEN"),
               "state": os.environ.get("OPENCLAW_STATE_DIR"), "cwd": os.getcwd()}, f)
print(os.environ["FAKE_CLI_ANSWER"])
"""
ACCEPTED = {"ok": True, "protocol": "openclaw.gateway.restart-handoff", "protocolVersion": 1, "status": "accepted",
            "handoff": {"kind": "gateway-supervisor-restart-handoff", "pid": 4242, "restartKind": "full-process"}}
NONE = {"ok": True, "protocol": "openclaw.gateway.restart-handoff", "protocolVersion": 1, "status": "none",
        "reason": "missing"}


@pytest.fixture
def cli(tmp_path: Path) -> tuple[Config, Path]:
    script = tmp_path / "openclaw.py"
    script.write_text(CLI)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return Config(gateway=replace(GatewayConfig(), command=(sys.executable, str(script)), state_dir=state)), \
        tmp_path / "record.json"


@pytest.mark.parametrize(("answer", "accepted", "said"), [
    (json.dumps(ACCEPTED, indent=2), True, "accepted"),
    (json.dumps(NONE), False, "none (missing)"),
    (json.dumps({**NONE, "status": "rejected", "reason": "pid-mismatch", "handoffPid": 1}), False,
     "rejected (pid-mismatch)"),
    ("Config health-state write failed\nnot json", False, "answered no JSON"),
])
def test_only_an_accepted_handoff_is_a_restart(cli, answer: str, accepted: bool, said: str) -> None:
    config, record = cli
    env = {"PATH": "/usr/bin:/bin", "OPENCLAW_GATEWAY_TOKEN": "t" * 32, "OPENCLAW_STATE_DIR": "/s",
           "FAKE_CLI_RECORD": str(record), "FAKE_CLI_ANSWER": answer}
    got, text = handoff.consume(config, 4242, env)
    assert got is accepted and said in text
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["gateway", "restart-handoff", "consume", "--expected-pid", "4242", "--json"]
    assert seen["token"] is None, "the CLI never needs the gateway token"
    assert seen["state"] == "/s"


def test_a_missing_cli_is_no_handoff(cli) -> None:
    config, _ = cli
    config = replace(config, gateway=replace(config.gateway, command=("/nonexistent/openclaw",)))
    accepted, text = handoff.consume(config, 1, {"PATH": "/usr/bin"})
    assert not accepted and "cannot run /nonexistent/openclaw" in text
