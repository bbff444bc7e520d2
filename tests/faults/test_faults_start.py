"""Faults at start: a gateway slower than start_timeout, a missing node or entry script, no keyring backend."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from double import pid_alive, python
from faultkit import Services, error_lines, health_ok, last_status, ready, spawned, stops_clean
from service_proc import ServiceProcess

from clawsvc import exitcodes

SLOW_START = {"gateway": {"start_timeout": 1.0}, "reconnect": {"max_attempts": 2}}


def test_a_start_slower_than_start_timeout_is_replaced_never_ready_then_given_up(services: Services) -> None:
    svc = services.start(double_env={"DOUBLE_STARTUP_DELAY": "30"}, extra=SLOW_START)
    assert svc.wait(60) == exitcodes.FAIL
    pids = spawned(svc)
    assert len(pids) == 3, "the first start and max_attempts=2 replacements"
    assert not any(pid_alive(pid) for pid in pids)
    replaced = re.findall(r"ERROR .*replacing gateway pid (\d+): .*no hello-ok within 1s", svc.log())
    assert [int(pid) for pid in replaced] == pids
    assert not svc.peer.find("^READY=1"), "READY=1 before any hello-ok"
    assert re.match(r"error: .*gave up after 2 attempts", last_status(svc))
    assert svc.leftovers() == []


def test_giving_up_on_a_slow_start_says_why_in_status(services: Services) -> None:
    svc = services.start(double_env={"DOUBLE_STARTUP_DELAY": "30"}, extra=SLOW_START)
    assert svc.wait(60) == exitcodes.FAIL
    assert "no hello-ok within 1s" in last_status(svc)


def assert_refused_to_start(svc: ServiceProcess, path: str) -> None:
    """Exit 78 with one ERROR line naming `path` and the fix; nothing was spawned."""
    assert svc.wait(30) == exitcodes.CONFIG
    lines = error_lines(svc, path)
    assert len(lines) == 1, svc.log()[-3000:]
    assert "clawsvc gateway-install" in lines[0]
    assert spawned(svc) == [] and not svc.peer.find("^READY=1")
    assert last_status(svc).startswith("error: ") and path in last_status(svc)
    assert svc.leftovers() == []


def test_missing_node_is_a_config_error_naming_the_path(services: Services, tmp_path: Path) -> None:
    node = tmp_path / "gone" / "bin" / "node"
    svc = services.start(extra={"gateway": {"command": [str(node), str(tmp_path / "openclaw.mjs")]}})
    assert_refused_to_start(svc, str(node))


def test_missing_entry_script_for_node_is_a_config_error_naming_the_path(services: Services, tmp_path: Path) -> None:
    node = tmp_path / "bin" / "node"  # any executable named node: the entry check comes before running it
    node.parent.mkdir()
    node.write_text("#!/bin/sh\nexit 1\n")
    node.chmod(0o755)
    entry = tmp_path / "gone" / "openclaw.mjs"
    svc = services.start(extra={"gateway": {"command": [str(node), str(entry)]}})
    assert_refused_to_start(svc, str(entry))


def test_missing_entry_script_for_another_interpreter_is_a_config_error(services: Services, tmp_path: Path) -> None:
    entry = tmp_path / "missing.py"
    svc = services.start(extra={"gateway": {"command": [python(), str(entry)]},
                                "reconnect": {"max_attempts": 1}})
    assert_refused_to_start(svc, str(entry))


def test_without_a_keyring_backend_one_warning_and_a_token_generated_under_state_dir(services: Services) -> None:
    svc = services.start(extra={"auth": {"token_file": None}, "providers": ["anthropic", "openai"]},
                         env={"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"})
    ready(svc)
    log = svc.log()
    warnings = [line for line in log.splitlines() if "WARNING" in line and "keyring" in line]
    assert len(warnings) == 1, warnings
    assert "keyring.backends.fail.Keyring" in warnings[0] and "$CREDENTIALS_DIRECTORY and files" in warnings[0]
    token_path = Path(svc.state_dir) / "gateway-token"
    assert f"generated a new gateway token and stored it in {token_path}" in log
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    token = token_path.read_text().strip()
    assert len(token) >= 32 and token not in log
    health_ok(svc)
    status = svc.status()
    assert status["state"] == "running" and status["error"] is None
    stops_clean(svc)
    assert token_path.read_text().strip() == token, "the generated token is kept for the next start"
