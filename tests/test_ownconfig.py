"""The gateway's own openclaw.json as clawsvc writes and judges it (clawsvc/ownconfig.py), and the spawn
that writes it (gateway.process.prepare_state_dir). What the real gateway makes of it: tests/test_assistant_real.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from localusers import reachable_dir, throwaway_user

from clawsvc import ownconfig
from clawsvc.boundedrun import Account, clawsvc_module
from clawsvc.config import Config, GatewayConfig
from clawsvc.gateway.process import build_argv, build_env, prepare_state_dir
from clawsvc.gateway.spawnenv import ALLOW_UNCONFIGURED

REF = {"source": "env", "provider": "default", "id": "OPENCLAW_GATEWAY_TOKEN"}


def config_in(state: Path, port: int = 18789) -> Config:
    return Config(gateway=GatewayConfig(command=("openclaw",), state_dir=state, port=port, compile_cache=None))


def test_a_start_writes_the_minimal_config_once_and_starts_the_gateway_configured(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = config_in(state)
    prepare_state_dir(config)
    written = state / "openclaw.json"
    assert json.loads(written.read_text()) == {"gateway": {"mode": "local", "auth": {"mode": "token", "token": REF}}}
    assert written.stat().st_mode & 0o777 == 0o600
    assert ALLOW_UNCONFIGURED not in build_argv(config)
    written.write_text('{"gateway": {"mode": "local"}, "agents": {}}\n')  # the admin's, later
    prepare_state_dir(config)
    assert json.loads(written.read_text()) == {"gateway": {"mode": "local"}, "agents": {}}, "never overwritten"
    assert [p.name for p in state.iterdir()] == ["openclaw.json"], "no temporary file left behind"


def test_a_link_at_its_name_is_neither_followed_nor_replaced(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.json"
    (tmp_path / "state" / "openclaw.json").symlink_to(elsewhere)
    fd = os.open(tmp_path / "state", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert ownconfig.ensure_minimal(fd) is False
    finally:
        os.close(fd)
    assert not elsewhere.exists() and (tmp_path / "state" / "openclaw.json").is_symlink()


def test_the_gateway_and_its_cli_find_the_port_in_the_environment(tmp_path: Path) -> None:
    env = build_env(config_in(tmp_path / "state", port=19123), "t" * 32, {}, base={})
    assert env["OPENCLAW_GATEWAY_PORT"] == "19123" and env["OPENCLAW_GATEWAY_TOKEN"] == "t" * 32


@pytest.mark.parametrize("token", [REF, {"source": "env", "id": "OPENCLAW_GATEWAY_TOKEN"},
                                   "${OPENCLAW_GATEWAY_TOKEN}", "$OPENCLAW_GATEWAY_TOKEN"])
def test_a_config_taking_clawsvcs_token_is_fine(token: object) -> None:
    verdict = ownconfig.judge_config({"gateway": {"mode": "local", "auth": {"token": token}}}, Path("/s/openclaw.json"))
    text = "/s/openclaw.json takes the gateway token from clawsvc (OPENCLAW_GATEWAY_TOKEN)"
    assert verdict == ownconfig.Verdict(ownconfig.Level.OK, text)


@pytest.mark.parametrize(("gateway", "level", "says"), [
    ({"mode": "local", "auth": {"mode": "token", "token": "pasted-from-the-ui-0123456789"}}, ownconfig.Level.FAIL,
     "sets its own gateway.auth.token, which wins over clawsvc's: the gateway rejects clawsvc's token"),
    ({"mode": "local", "auth": {"token": {"source": "env", "id": "MY_TOKEN"}}}, ownconfig.Level.FAIL,
     "sets its own gateway.auth.token"),
    ({"mode": "local", "auth": {"mode": "password", "token": REF}}, ownconfig.Level.FAIL,
     "sets gateway.auth.mode to 'password': the gateway no longer takes clawsvc's token"),
    ({"mode": "local"}, ownconfig.Level.WARN, "has no gateway.auth.token"),
    ({"auth": {"token": REF}}, ownconfig.Level.FAIL, "does not set gateway.mode to \"local\" (None)"),
])
def test_what_keeps_the_gateway_from_taking_clawsvcs_token_is_named_with_its_fix(
        gateway: dict[str, object], level: ownconfig.Level, says: str) -> None:
    verdict = ownconfig.judge_config({"gateway": gateway}, Path("/s/openclaw.json"))
    assert verdict.level is level and verdict.text.startswith("/s/openclaw.json ")
    assert says in verdict.text and verdict.text.endswith(("`sudo clawsvc doctor --fix`",
                                                           "`sudo clawsvc doctor --fix` to point it back at clawsvc's"))
    assert "pasted-from-the-ui" not in verdict.text


def test_the_fix_is_the_gateways_own_merge_of_a_reference(tmp_path: Path) -> None:
    """No secret on its command line: a reference to the environment the gateway already has."""
    assert ownconfig.FIX_ARGS[:3] == ("config", "set", "gateway") and ownconfig.FIX_ARGS[4:] == ("--strict-json",
                                                                                                 "--merge")
    assert json.loads(ownconfig.FIX_ARGS[3]) == {"mode": "local", "auth": {"mode": "token", "token": REF}}


def test_judge_reads_no_link_and_says_what_it_cannot_check(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert ownconfig.judge(state).text.endswith("does not exist yet; clawsvc writes it at the gateway's next start")
    (state / "openclaw.json").write_text("{gateway: {mode: 'local'}, // json5\n}")
    assert ownconfig.judge(state).level is ownconfig.Level.WARN and "not plain JSON" in ownconfig.judge(state).text
    (state / "openclaw.json").unlink()
    (tmp_path / "other.json").write_text(json.dumps({"gateway": {"mode": "local", "auth": {"token": "x" * 20}}}))
    (state / "openclaw.json").symlink_to(tmp_path / "other.json")
    verdict = ownconfig.judge(state)
    assert verdict.level is ownconfig.Level.WARN and "symbolic link" in verdict.text


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a user and run a child as it")
def test_root_judges_the_service_users_file_in_a_child_running_as_that_user() -> None:
    """Root never parses what the service user wrote: the child does, and it reads a 0600 file of that user."""
    with throwaway_user() as user, reachable_dir() as top:
        state = top / "state"
        state.mkdir(mode=0o700)
        path = state / "openclaw.json"
        path.write_text(json.dumps({"gateway": {"mode": "local", "auth": {"token": "from-the-ui-0123456789"}}}))
        path.chmod(0o600)
        for item in (state, path):
            os.chown(item, user.pw_uid, user.pw_gid)
        verdict = ownconfig.judge_as(Account(user.pw_uid, user.pw_gid), state)
        assert verdict.level is ownconfig.Level.FAIL, verdict.text
        assert verdict.text.startswith(f"{path} sets its own gateway.auth.token")
        path.chmod(0o000)  # not readable even by its owner: the child says so, as that user
        unreadable = ownconfig.judge_as(Account(user.pw_uid, user.pw_gid), state)
        assert unreadable.level is ownconfig.Level.WARN and "Permission denied" in unreadable.text


def test_roots_child_needs_only_clawsvcs_shared_helpers() -> None:
    """The child runs as the service user on whatever interpreter clawsvc has, with only clawsvc on its path: it
    must not need yaml or any part of clawsvc beyond the helpers (import-linter keeps the imports so)."""
    argv, env = clawsvc_module("clawsvc.ownconfig", "/nonexistent")
    probe = [argv[0], "-P", "-c", "import sys, clawsvc.ownconfig; "
             "print(sorted(m for m in sys.modules if m.startswith(('yaml', 'websocket', 'clawsvc.config'))))"]
    done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    ran = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert json.loads(ran.stdout) == {"level": "ok", "text": "/nonexistent/openclaw.json does not exist yet; clawsvc "
                                      "writes it at the gateway's next start"}
