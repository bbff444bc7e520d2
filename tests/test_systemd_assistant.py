"""From `clawsvc install --system` to a working assistant, in a booted systemd 252 (tests/systemd_guest.py) with the
real gateway, as a new user would go: the dashboard link opened by a real headless Chromium (the Control UI
connected, read from its DOM), the gateway's own CLI through `clawsvc openclaw` as root (the state dir stays the
service user's), the Control UI's token hint, a model of the tests' own (tests/helpers/slow_model.py, in the
guest's network namespace) answering a chat, a token written into openclaw.json undone by `doctor --fix`, ten
restarts in a row, and what status and doctor say once systemd refuses a start. One guest; the tests build on
each other in file order. Run alone: pytest -m systemd tests/test_systemd_assistant.py -s (-s: timings)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd_guest import Guest, booted_systemd, in_ci
from test_systemd_install import INSTALL_TIMEOUT, PREFIX, farm

from clawsvc import ownconfig
from clawsvc.commands.runtime.provision import Installation

pytestmark = [pytest.mark.systemd, pytest.mark.realgateway, pytest.mark.timeout(3600)]

HELPERS = Path(__file__).parent / "helpers"
STATE = "/var/lib/clawsvc/openclaw"
CLI_TIMEOUT = 300.0  # one cold openclaw CLI in the hardened guest: 7-15 s idle, much more under load
BROWSER_TIMEOUT = 240.0
CONNECTED = "Gateway | Connected"  # the Control UI's own status, once its WebSocket has its hello-ok
LOGIN_SCREEN = "This Gateway expects its token"
REPLY = "hello from the local model"
LITERAL = "pasted-from-the-control-ui-" + "q" * 20
# the tests' OpenAI-compatible model, serving in the guest's network namespace until its stdin closes
MODEL_SERVER = f"""import sys
sys.path.insert(0, {str(HELPERS)!r})
from slow_model import SlowModel
with SlowModel(reply={REPLY!r}, delay=1.0, chunks=2) as model:
    print(model.port, flush=True)
    sys.stdin.read()
    print(len(model.calls), flush=True)
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, gateway_install: Installation) -> Iterator[Guest]:
    tmp = tmp_path_factory.mktemp("assistant-guest")
    with booted_systemd(tmp, writable={farm(tmp, gateway_install): Path(PREFIX)}) as booted:
        yield booted
        print(f"--- clawsvc.service\n{booted.journal('clawsvc.service')[-4000:]}")


def clawsvc(guest: Guest, *args: str, user: str | None = None, timeout: float = CLI_TIMEOUT,
            ok: bool = True) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    done = guest.run("clawsvc", *args, user=user, timeout=timeout)
    print(f"\nTIMING clawsvc {' '.join(args)[:60]}: {time.monotonic() - started:.1f}s (exit {done.returncode})")
    token = guest.path(f"{STATE}/gateway-token").read_text().strip()
    assert token not in done.stdout + done.stderr, "the gateway token in a command's output"
    if ok:
        assert done.returncode == 0, f"clawsvc {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def status(guest: Guest) -> dict[str, object]:
    done = guest.run("clawsvc", "status", "--json", timeout=60)
    return dict(json.loads(done.stdout)) if done.stdout.strip() else {}


def not_the_service_users(guest: Guest) -> list[str]:
    uid = int(guest.run("id", "-u", "clawsvc", check=True).stdout)
    root = guest.path(STATE)
    return [str(p) for p in [root, *root.rglob("*")] if p.lstat().st_uid != uid]


@pytest.fixture(scope="module")
def installed(guest: Guest) -> str:
    assert guest.run("clawsvc", "gateway-install", timeout=300).returncode == 0
    started = time.monotonic()
    done = guest.run("clawsvc", "install", "--system", timeout=INSTALL_TIMEOUT)
    print(f"\nTIMING install --system to READY: {time.monotonic() - started:.1f}s")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


def test_install_ends_with_clawsvc_on_path_and_how_to_use_the_assistant(guest: Guest, installed: str) -> None:
    assert "path     /usr/local/bin/clawsvc runs this clawsvc" in installed
    block = installed.split("Use your assistant", 1)[1]
    assert "Control UI     clawsvc dashboard" in block
    assert f"gateway token  generated {STATE}/gateway-token" in block
    assert "sudo clawsvc keys set anthropic && sudo systemctl restart clawsvc" in block
    assert "sudo clawsvc openclaw channels add telegram" in block
    own = guest.path(f"{STATE}/openclaw.json")
    assert json.loads(own.read_text()) == ownconfig.MINIMAL and own.stat().st_mode & 0o777 == 0o600
    assert not_the_service_users(guest) == []


def test_the_dashboard_link_opens_a_connected_control_ui(guest: Guest, installed: str) -> None:
    if shutil.which("chromium") is None:  # scripts/test.sh installs Debian's chromium
        (pytest.fail if in_ci() else pytest.skip)("chromium is not installed (apt-get install chromium)")
    link = json.loads(clawsvc(guest, "dashboard", "--json").stdout)
    assert link["url"].startswith("http://127.0.0.1:18789/#bootstrapToken=")
    started = time.monotonic()
    seen = subprocess.run(["nsenter", "-t", str(guest.pid), "-n", sys.executable, str(HELPERS / "browser_page.py"),
                           link["url"], "--until", CONNECTED, "--timeout", str(BROWSER_TIMEOUT)],
                          capture_output=True, text=True, timeout=BROWSER_TIMEOUT + 120)
    print(f"\nTIMING headless Chromium: the link to a connected Control UI: {time.monotonic() - started:.1f}s")
    page = json.loads(seen.stdout)
    assert page["found"], f"the Control UI never said {CONNECTED!r}: {page['text'][:2000]}"
    assert LOGIN_SCREEN not in page["text"] and "bootstrapToken" not in page["url"], "the link is used up"
    assert "gave a one-time Control UI login link to uid 0" in guest.journal("clawsvc.service")


def test_the_service_user_finds_the_system_config_and_its_service(guest: Guest, installed: str) -> None:
    """`sudo -u clawsvc clawsvc ...` (the unit's own comments suggest it) reads /etc/clawsvc/clawsvc.yaml."""
    doctor = clawsvc(guest, "doctor", user="clawsvc", ok=False)
    assert doctor.stdout.splitlines()[0] == "ok    config: /etc/clawsvc/clawsvc.yaml is valid", doctor.stdout
    assert f"state dir: {STATE} (mode 0700)" in doctor.stdout
    link = json.loads(clawsvc(guest, "dashboard", "--json", user="clawsvc").stdout)
    assert "bootstrapToken=" in link["url"]


def test_the_gateways_cli_as_root_is_the_service_users(guest: Guest, installed: str) -> None:
    clawsvc(guest, "openclaw", "health")
    reachable = clawsvc(guest, "openclaw", "status")
    assert re.search(r"Gateway\s+│ local · ws://127\.0\.0\.1:18789 .* reachable", reachable.stdout), reachable.stdout
    clawsvc(guest, "openclaw", "config", "set", "commands.ownerAllowFrom", '["telegram:123456789"]', "--strict-json")
    assert not_the_service_users(guest) == []


def test_a_control_group_member_gets_a_link_but_not_the_cli(guest: Guest, installed: str) -> None:
    """control.group members have the control socket (operator.admin through rpc): a one-time dashboard link, yes;
    a shell-equivalent as the service user (its token and keys), no."""
    guest.run("useradd", "-M", "-G", "clawsvc", "alice", check=True)
    config = guest.path("/etc/clawsvc/clawsvc.yaml")
    config.write_text(config.read_text().replace("\n  group: null\n", "\n  group: clawsvc\n"))
    guest.systemctl("reload", "clawsvc.service", check=True, timeout=120)
    guest.wait_for("the socket to let the group in", lambda: guest.run(
        "clawsvc", "status", user="alice", timeout=60).returncode == 0, timeout=60)
    link = json.loads(clawsvc(guest, "dashboard", "--json", user="alice").stdout)
    assert "bootstrapToken=" in link["url"]
    assert re.search(r"gave a one-time Control UI login link to uid \d+ ", guest.journal("clawsvc.service"))
    refused = clawsvc(guest, "openclaw", "health", user="alice", ok=False)
    assert refused.returncode == 126 and refused.stderr.startswith(
        "clawsvc openclaw: the gateway's CLI runs as clawsvc, the user the service runs as: run it as root")


def test_the_control_uis_token_hint_leaves_the_service_running(guest: Guest, installed: str) -> None:
    before = status(guest)["pid"]
    hint = clawsvc(guest, "openclaw", "doctor", "--generate-gateway-token")
    assert "managed" in hint.stdout and "SecretRef" in hint.stdout
    after = status(guest)
    assert after["state"] == "running" and after["pid"] == before
    assert guest.show("clawsvc.service", "ActiveState")["ActiveState"] == "active"


def test_a_configured_model_answers_a_chat(guest: Guest, installed: str) -> None:
    """The README's walk: a provider (here a local OpenAI-compatible server), the default model, a first chat."""
    server = subprocess.Popen(["nsenter", "-t", str(guest.pid), "-n", sys.executable, "-c", MODEL_SERVER],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline())
        model = {"id": "local-model", "name": "Local model", "reasoning": False, "input": ["text"],
                 "contextWindow": 32000, "maxTokens": 4096,
                 "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}}
        models = {"mode": "merge", "providers": {"local": {"baseUrl": f"http://127.0.0.1:{port}/v1", "apiKey": "x",
                                                           "api": "openai-completions", "models": [model]}}}
        clawsvc(guest, "openclaw", "config", "set", "models", json.dumps(models), "--strict-json", "--merge")
        clawsvc(guest, "openclaw", "models", "set", "local/local-model")
        chat = clawsvc(guest, "openclaw", "agent", "--agent", "main", "-m", "Hello")
        assert REPLY in chat.stdout
        server.stdin.close()
        assert int(server.stdout.readline()) >= 1, "the model was asked"
    finally:
        server.kill()
        server.wait(30)
    assert not_the_service_users(guest) == []


def test_a_token_written_into_openclaw_json_is_named_and_undone(guest: Guest, installed: str) -> None:
    main_pid = guest.show("clawsvc.service", "MainPID")["MainPID"]
    gateway = status(guest)["pid"]
    clawsvc(guest, "openclaw", "config", "set", "gateway.auth.token", LITERAL)
    guest.wait_for("STATUS= to name the rejected token", lambda: "rejects clawsvc's token" in guest.show(
        "clawsvc.service", "StatusText")["StatusText"], timeout=180)
    line = guest.show("clawsvc.service", "StatusText")["StatusText"]
    assert f"{STATE}/openclaw.json sets gateway.auth.token" in line and "`sudo clawsvc doctor --fix`" in line
    shown = clawsvc(guest, "status", ok=False)
    assert shown.returncode == 3 and "rejects clawsvc's token" in shown.stdout
    doctor = clawsvc(guest, "doctor", ok=False)
    assert doctor.returncode == 1, doctor.stdout
    assert f"FAIL  openclaw.json: {STATE}/openclaw.json sets its own gateway.auth.token" in doctor.stdout, doctor.stdout
    assert LITERAL not in shown.stdout + doctor.stdout
    clawsvc(guest, "doctor", "--fix")
    guest.wait_for("the service to reach its gateway again", lambda: status(guest).get("state") == "running",
                   timeout=180)
    assert status(guest)["pid"] == gateway and guest.show("clawsvc.service", "MainPID")["MainPID"] == main_pid


def test_a_root_owned_file_in_the_state_dir_is_named_and_given_back(guest: Guest, installed: str) -> None:
    stray = f"{STATE}/left-by-root.json"
    guest.run("install", "-m", "600", "/dev/null", stray, check=True)
    refused = clawsvc(guest, "check-config", ok=False)
    assert refused.returncode == 78 and f"{stray} (uid 0)" in refused.stderr and "doctor --fix" in refused.stderr
    fixed = clawsvc(guest, "doctor", "--fix")
    assert f"fixed  {stray}: now owned by clawsvc" in fixed.stdout
    assert not_the_service_users(guest) == []
    clawsvc(guest, "check-config")


def test_ten_restarts_in_a_row_all_succeed(guest: Guest, installed: str) -> None:
    took = []
    for _ in range(10):
        started = time.monotonic()
        guest.systemctl("restart", "clawsvc.service", check=True, timeout=INSTALL_TIMEOUT)
        took.append(time.monotonic() - started)
        assert guest.show("clawsvc.service", "ActiveState")["ActiveState"] == "active"
    print(f"\nTIMING ten systemctl restart in a row: {sum(took):.0f}s ({min(took):.1f}-{max(took):.1f}s each)")
    assert status(guest)["state"] == "running"


def test_once_systemd_refuses_a_start_status_and_doctor_name_reset_failed(guest: Guest, installed: str) -> None:
    dropin = "/run/systemd/system/clawsvc.service.d/99-test-limit.conf"
    guest.write(dropin, "[Unit]\nStartLimitIntervalSec=300\nStartLimitBurst=1\n")
    guest.systemctl("daemon-reload", check=True)
    try:
        for _ in range(2):  # the starts of the last five minutes count: the first or the second is refused
            if guest.systemctl("restart", "clawsvc.service", timeout=INSTALL_TIMEOUT).returncode != 0:
                break
        assert guest.show("clawsvc.service", "Result")["Result"] == "start-limit-hit"
        fix = "`sudo systemctl reset-failed clawsvc.service`, then `sudo systemctl start clawsvc.service`"
        shown = clawsvc(guest, "status", ok=False)
        assert shown.returncode == 3 and f"started too often (start-limit-hit); run {fix}" in shown.stderr
        doctor = clawsvc(guest, "doctor", ok=False)
        assert "FAIL  units: systemd refused to start clawsvc.service: it was started too often" in doctor.stdout
    finally:
        os.unlink(guest.path(dropin))
        guest.systemctl("daemon-reload", check=True)
        guest.systemctl("reset-failed", "clawsvc.service")
        guest.systemctl("start", "clawsvc.service", timeout=INSTALL_TIMEOUT)
