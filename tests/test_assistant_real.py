"""Using the assistant through clawsvc against the real gateway: `clawsvc run` with a state dir that has no
openclaw.json yet, then `clawsvc dashboard`, `clawsvc openclaw ...`, and a token written into openclaw.json (the
Control UI's hint) refused, named and fixed while the gateway keeps serving. One service for the ordered tests.
The same as a system service in a booted systemd, with a browser: tests/test_systemd_assistant.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realgw import QUIET_ENV, free_port
from service_proc import ServiceProcess, base_config, merge
from terminal import on_a_terminal, read_until

from clawsvc import ownconfig
from clawsvc.commands.runtime.provision import Installation

pytestmark = [pytest.mark.realgateway, pytest.mark.timeout(1200)]

START_TIMEOUT = 240.0
CLI_TIMEOUT = 240.0  # one cold openclaw CLI: 2-13 s here idle, 36 s seen under load
LITERAL = "pasted-from-the-control-ui-" + "z" * 20


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, gateway_install: Installation) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("assistant")
    home = root / "home"
    home.mkdir()
    env = {**QUIET_ENV, "HOME": str(home), "OPENCLAW_HOME": str(home), "TMPDIR": str(home)}
    config = merge(base_config(root, gateway_install.command, free_port()),
                   {"gateway": {"env": env, "start_timeout": START_TIMEOUT},
                    "reconnect": {"base_delay": "1s", "max_delay": "3s"}})
    service = ServiceProcess.start(root, config)
    try:
        service.wait_state(lambda s: s["state"] == "running", START_TIMEOUT + 30, "the gateway to be running")
        yield service
    finally:
        service.close()


def clawsvc(svc: ServiceProcess, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "clawsvc", args[0], "-c", str(svc.config_path), *args[1:]],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert svc.token not in done.stdout + done.stderr, f"the gateway token in the output of clawsvc {args[0]}"
    return done


def status(svc: ServiceProcess) -> dict[str, Any]:
    return svc.status(timeout=30)


def test_the_service_writes_the_gateways_own_config_and_starts_it_configured(svc: ServiceProcess) -> None:
    path = Path(svc.state_dir) / "openclaw.json"
    assert json.loads(path.read_text()) == ownconfig.MINIMAL and path.stat().st_mode & 0o777 == 0o600
    argv = Path(f"/proc/{status(svc)['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"--allow-unconfigured" not in argv and svc.token.encode() not in b" ".join(argv)
    assert "wrote the gateway's own config" in svc.log()


def test_dashboard_hands_out_a_one_time_link_and_never_the_token(svc: ServiceProcess) -> None:
    port = svc.config["gateway"]["port"]
    started = time.monotonic()
    done = clawsvc(svc, "dashboard", "--json")
    print(f"\nTIMING clawsvc dashboard (the gateway's CLI run by the service): {time.monotonic() - started:.1f}s")
    assert done.returncode == 0, done.stderr
    link = json.loads(done.stdout)
    assert link["url"].startswith(f"http://127.0.0.1:{port}/#bootstrapToken=")
    assert "bootstrapProfile=owner" in link["url"] and link["port"] == port
    assert link["ssh"].startswith(f"ssh -N -L {port}:127.0.0.1:{port} ")
    assert "gave a one-time Control UI login link to uid 0" in svc.log()
    assert link["url"].split("#", 1)[1] not in svc.log(), "the link itself is never logged"


def test_the_wrapper_runs_the_gateways_cli_against_this_gateway(svc: ServiceProcess) -> None:
    health = clawsvc(svc, "openclaw", "health")
    assert health.returncode == 0, health.stdout + health.stderr
    state = clawsvc(svc, "openclaw", "status")
    assert state.returncode == 0 and "reachable" in state.stdout, state.stdout + state.stderr
    assert f"ws://127.0.0.1:{svc.config['gateway']['port']}" in state.stdout


def test_the_gateways_own_token_command_tells_clawsvcs_token(svc: ServiceProcess) -> None:
    """What the Control UI's login screen tells a user to run, through the wrapper, on a terminal (it refuses
    anywhere else): the token clawsvc gave the gateway, since openclaw.json names it by reference."""
    argv = [sys.executable, "-m", "clawsvc", "openclaw", "-c", str(svc.config_path), "gateway", "auth-token", "--show"]
    env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "TERM": "dumb"}
    with on_a_terminal(argv, env) as (proc, master):
        shown = read_until(master, None, CLI_TIMEOUT)  # all it shows, until it exits
        assert proc.wait(30) == 0
    assert any(line.strip() == svc.token for line in shown.splitlines()), "not clawsvc's token"


def test_the_control_uis_hint_leaves_the_service_running(svc: ServiceProcess) -> None:
    """`openclaw doctor --generate-gateway-token` skips a token managed by SecretRef: same gateway, still running."""
    before = status(svc)["pid"]
    done = clawsvc(svc, "openclaw", "doctor", "--generate-gateway-token")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "managed" in done.stdout and "SecretRef" in done.stdout
    assert json.loads((Path(svc.state_dir) / "openclaw.json").read_text())["gateway"]["auth"]["token"] == \
        ownconfig.TOKEN_REF
    assert status(svc)["state"] == "running" and status(svc)["pid"] == before


def test_a_token_written_into_openclaw_json_is_named_and_undone_by_doctor_fix(svc: ServiceProcess) -> None:
    before = status(svc)["pid"]
    done = clawsvc(svc, "openclaw", "config", "set", "gateway.auth.token", LITERAL)
    assert done.returncode == 0, done.stdout + done.stderr
    locked = svc.wait_state(lambda s: "rejects clawsvc's token" in (s.get("cause") or ""), 120,
                            "clawsvc to say the gateway rejects its token")
    assert locked["state"] == "reconnecting" and locked["pid"] == before
    assert f"{svc.state_dir}/openclaw.json sets gateway.auth.token" in locked["cause"]
    shown = clawsvc(svc, "status")
    assert shown.returncode == 3 and f"Cause: {locked['cause']}" in shown.stdout
    doctor = clawsvc(svc, "doctor")
    assert f"FAIL  openclaw.json: {svc.state_dir}/openclaw.json sets its own gateway.auth.token" in doctor.stdout
    assert "FAIL  service: reconnecting: gateway pid" in doctor.stdout and doctor.returncode == 1
    assert LITERAL not in doctor.stdout + shown.stdout
    fixed = clawsvc(svc, "doctor", "--fix")
    assert f"fixed  {svc.state_dir}/openclaw.json: gateway.mode local, gateway.auth.token from clawsvc" in fixed.stdout
    back = svc.wait_state(lambda s: s["state"] == "running", 120, "the service to reach its gateway again")
    assert back["pid"] == before, "the gateway applied the fix itself: no restart"
    assert json.loads((Path(svc.state_dir) / "openclaw.json").read_text())["gateway"]["auth"]["token"] == \
        ownconfig.TOKEN_REF
