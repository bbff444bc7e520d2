"""`clawsvc doctor`: real checks against fake and real gateway installs, a held port, units and secrets."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from double import double_command, free_port
from service_proc import ServiceProcess, base_config

from clawsvc import exitcodes
from clawsvc.commands.doctor import main as doctor
from clawsvc.commands.install import plan as install
from clawsvc.commands.runtime.provision import Installation, node_version_of

HELPERS = Path(__file__).parent / "helpers"
TOKEN = "doctor-test-token-" + "Zq9" * 8
API_KEY = "sk-ant-api03-" + "Dr7" * 10
ENGINES = ">=24.16 <25 || >=26.1"


def fake_install(root: Path, node_version: str = "24.21.0") -> tuple[Path, Path]:
    """A `node` that only answers --version, and an openclaw entry script with its package.json."""
    node = root / "bin" / "node"
    node.parent.mkdir(parents=True)
    node.write_text(f"#!/bin/sh\necho v{node_version}\n")
    node.chmod(0o755)
    entry = root / "openclaw" / "openclaw.mjs"
    entry.parent.mkdir(parents=True)
    entry.write_text("// not a gateway\n")
    package = {"name": "openclaw", "version": "2026.9.6", "engines": {"node": ENGINES}}
    (entry.parent / "package.json").write_text(json.dumps(package))
    return node, entry


def write_config(tmp_path: Path, command: tuple[str | Path, ...], **sections: Any) -> Path:
    config: dict[str, Any] = {
        "gateway": {"command": [str(word) for word in command], "port": free_port(),
                    "state_dir": str(tmp_path / "state")},
        "providers": ["anthropic", "openai"],
        "control": {"socket": str(tmp_path / "run" / "control.sock")},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "clawsvc.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def doctor_env(tmp_path: Path, keyring_backend: str = "keyring.backends.fail.Keyring") -> dict[str, str]:
    """Units looked up below tmp_path (install root, HOME); the keyring chosen by the test."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("CLAWSVC_CONFIG", "XDG_CONFIG_HOME", "NOTIFY_SOCKET") and not k.startswith(("DBUS",
                                                                                                   "CREDENTIALS"))}
    (tmp_path / "home").mkdir(exist_ok=True)
    return {**base, "HOME": str(tmp_path / "home"), install.INSTALL_ROOT_ENV: str(tmp_path / "root"),
            "PYTHON_KEYRING_BACKEND": keyring_backend, "PYTHONPATH": str(HELPERS),
            "KEYRING_FILE": str(tmp_path / "keyring.json")}


def run_doctor(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clawsvc", "doctor", "-c", str(config)], env=env,
                          capture_output=True, text=True, timeout=120)


def lines(output: str, level: str, topic: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"{level} ") and f" {topic}:" in line]


def isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """For in-process runs: no units, credentials or config from this machine."""
    for name, value in doctor_env(tmp_path).items():
        if name in ("HOME", install.INSTALL_ROOT_ENV):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)


# ---------------------------------------------------------------- gateway.command

def test_missing_node_fails_naming_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "node"
    config = write_config(tmp_path, (missing, tmp_path / "gone" / "openclaw.mjs"))
    done = run_doctor(config, doctor_env(tmp_path))
    assert done.returncode == exitcodes.FAIL, done.stdout + done.stderr
    [failed] = lines(done.stdout, "FAIL", "gateway.command")
    assert str(missing) in failed and "clawsvc gateway-install" in failed
    assert done.stdout.splitlines()[-1].startswith("1 problem,")
    assert done.stderr == ""


def test_old_node_fails_with_the_range_it_needs(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path, node_version="20.20.2")
    done = run_doctor(write_config(tmp_path, (node, entry)), doctor_env(tmp_path))
    assert done.returncode == exitcodes.FAIL
    [failed] = lines(done.stdout, "FAIL", "gateway.command")
    assert "needs >=24.16" in failed and "have 20.20.2" in failed and "clawsvc gateway-install" in failed


def test_good_fake_install_passes_with_only_warnings(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)
    done = run_doctor(write_config(tmp_path, (node, entry)), doctor_env(tmp_path))
    assert done.returncode == exitcodes.OK, done.stdout
    [ok] = lines(done.stdout, "ok  ", "gateway.command")
    assert f"node 24.21.0 ({node}) runs openclaw 2026.9.6 ({entry})" in ok and ENGINES in ok
    assert lines(done.stdout, "warn", "keyring"), "a missing keyring backend is a warning, not a problem"
    assert not [line for line in done.stdout.splitlines() if line.startswith("FAIL")]


@pytest.mark.realgateway
def test_node_20_with_the_real_entry_script(tmp_path: Path, gateway_install: Installation) -> None:
    system_node = shutil.which("node", path="/usr/bin")
    if system_node is None or node_version_of(system_node).startswith(("24.", "26.", "27.")):
        pytest.skip("needs an old system node in /usr/bin")
    done = run_doctor(write_config(tmp_path, (system_node, gateway_install.entry)), doctor_env(tmp_path))
    assert done.returncode == exitcodes.FAIL
    [failed] = lines(done.stdout, "FAIL", "gateway.command")
    assert system_node in failed and "needs >=24.16" in failed


@pytest.mark.realgateway
def test_real_installation_is_all_good(tmp_path: Path, gateway_install: Installation) -> None:
    done = run_doctor(write_config(tmp_path, gateway_install.command), doctor_env(tmp_path))
    assert done.returncode == exitcodes.OK, done.stdout
    [ok] = lines(done.stdout, "ok  ", "gateway.command")
    assert f"node {gateway_install.node_version}" in ok and f"openclaw {gateway_install.version}" in ok
    assert lines(done.stdout, "ok  ", "gateway.port") and lines(done.stdout, "ok  ", "token")


def test_hidden_command_fails_when_the_system_unit_runs_this_config(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)  # below /tmp: hidden by PrivateTmp=yes
    config = write_config(tmp_path, (node, entry))
    install.apply(install.plan("system", config=config), tmp_path / "root", io.StringIO())
    done = run_doctor(config, doctor_env(tmp_path))
    assert done.returncode == exitcodes.FAIL
    assert any(str(node) in line and "not visible to the system unit" in line
               for line in lines(done.stdout, "FAIL", "gateway.command"))
    [unit] = lines(done.stdout, "ok  ", "units")
    assert "system unit" in unit and f"(config {config})" in unit


# ---------------------------------------------------------------- port

def test_port_held_by_a_stranger_names_its_pid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    node, entry = fake_install(tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        findings, valid = doctor.diagnose(str(write_config(tmp_path, (node, entry), gateway={"port": port})))
    assert valid
    [held] = [f for f in findings if f.topic == "gateway.port"]
    assert held.level is doctor.Level.FAIL
    assert f"{port} is held by pid {os.getpid()}" in held.text and "set gateway.port" in held.text


def test_port_held_by_the_running_services_gateway_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    root.mkdir()
    svc = ServiceProcess.start(root, base_config(root, double_command(), free_port()))
    try:
        status = svc.wait_state(lambda s: s.get("state") == "running", 60, "the service to run")
        done = run_doctor(svc.config_path, doctor_env(tmp_path))
    finally:
        svc.close()
    [held] = lines(done.stdout, "ok  ", "gateway.port")
    assert f"held by pid {status['pid']}" in held and f"running clawsvc (pid {svc.pid})" in held
    [control] = lines(done.stdout, "ok  ", "control socket")
    assert "clawsvc is running" in control
    assert done.returncode == exitcodes.OK, done.stdout
    assert svc.token not in done.stdout + done.stderr


# ---------------------------------------------------------------- config

def test_invalid_config_exits_78_and_still_checks_keyring_and_units(tmp_path: Path) -> None:
    config = tmp_path / "clawsvc.yaml"
    config.write_text("gateway:\n  port: nope\n")
    done = run_doctor(config, doctor_env(tmp_path))
    assert done.returncode == exitcodes.CONFIG
    out = done.stdout.splitlines()
    assert out[0].startswith("FAIL  config: ") and f"{config}:2" in out[0] and "gateway.port" in out[0]
    assert out[1].startswith("skip  ")
    assert lines(done.stdout, "warn", "keyring") and lines(done.stdout, "warn", "units")


def test_main_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    isolate(monkeypatch, tmp_path)
    node, entry = fake_install(tmp_path, node_version="25.0.0")
    code = doctor.main(argparse.Namespace(config=str(write_config(tmp_path, (node, entry)))))
    out = capsys.readouterr().out
    assert code == exitcodes.FAIL
    assert "node not supported for the gateway" in lines(out, "FAIL", "gateway.command")[0]
    assert out.splitlines()[-1].startswith("1 problem,")


# ---------------------------------------------------------------- secrets

def test_token_will_be_generated_but_doctor_creates_nothing(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)
    done = run_doctor(write_config(tmp_path, (node, entry)), doctor_env(tmp_path))
    [token] = lines(done.stdout, "ok  ", "token")
    assert f"will be generated on first start at {tmp_path / 'state' / 'gateway-token'}" in token
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "run").exists()


def test_token_file_problems_never_show_the_token(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    config = write_config(tmp_path, (node, entry), auth={"token_file": str(token_file)})
    done = run_doctor(config, doctor_env(tmp_path))
    assert done.returncode == exitcodes.OK
    assert lines(done.stdout, "ok  ", "token") == [f"ok    token: file {token_file}"]
    [exposed] = lines(done.stdout, "warn", "token")
    assert "mode 0644" in exposed and f"chmod 600 {token_file}" in exposed

    token_file.write_text(TOKEN[:4] + "\n")
    done = run_doctor(config, doctor_env(tmp_path))
    assert done.returncode == exitcodes.FAIL
    assert "too short" in lines(done.stdout, "FAIL", "token")[0]
    for secret in (TOKEN, TOKEN[:4]):
        assert secret not in done.stdout + done.stderr


def test_provider_keys_from_the_keyring_by_name_only(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)
    (tmp_path / "keyring.json").write_text(json.dumps({"clawsvc/anthropic": API_KEY}))
    env = doctor_env(tmp_path, keyring_backend="keyring_file_backend.FileKeyring")
    done = run_doctor(write_config(tmp_path, (node, entry)), env)
    assert done.returncode == exitcodes.OK, done.stdout
    assert lines(done.stdout, "ok  ", "keyring") == ["ok    keyring: keyring_file_backend.FileKeyring"]
    assert lines(done.stdout, "ok  ", "provider keys") == [
        "ok    provider keys: anthropic (keyring); none for openai"]
    assert API_KEY not in done.stdout + done.stderr


def test_no_provider_keys_is_a_warning(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)
    done = run_doctor(write_config(tmp_path, (node, entry)), doctor_env(tmp_path))
    [warning] = lines(done.stdout, "warn", "provider keys")
    assert "none found for anthropic, openai" in warning and "clawsvc keys set" in warning
    assert done.returncode == exitcodes.OK


# ---------------------------------------------------------------- units

def test_unit_credentials_count_as_sources_and_missing_files_fail(tmp_path: Path) -> None:
    config = write_config(tmp_path, ("/usr/bin/env",))
    install.apply(install.plan("system", config=config), tmp_path / "root", io.StringIO())
    dropin = tmp_path / "root/etc/systemd/system/clawsvc.service.d/credentials.conf"
    dropin.parent.mkdir()
    present = tmp_path / "openai-key"
    present.write_text(API_KEY + "\n")
    dropin.write_text(f"[Service]\nLoadCredential=gateway-token:{tmp_path / 'no-such-token'}\n"
                      f"LoadCredential=openai-api-key:{present}\n")
    done = run_doctor(config, doctor_env(tmp_path))
    assert done.returncode == exitcodes.FAIL
    [missing] = lines(done.stdout, "FAIL", "units")
    assert "credential gateway-token" in missing and str(tmp_path / "no-such-token") in missing
    assert lines(done.stdout, "ok  ", "token")[0].startswith("ok    token: credential gateway-token (from the unit")
    assert "openai (credential in the unit)" in lines(done.stdout, "ok  ", "provider keys")[0]
    assert API_KEY not in done.stdout


def test_no_units_installed_is_a_warning_naming_the_paths(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)
    done = run_doctor(write_config(tmp_path, (node, entry)), doctor_env(tmp_path))
    [warning] = lines(done.stdout, "warn", "units")
    assert str(tmp_path / "root/etc/systemd/system/clawsvc.service") in warning and "clawsvc install" in warning


def test_a_hanging_keyring_is_reported_not_waited_for(tmp_path: Path) -> None:
    node, entry = fake_install(tmp_path)
    env = doctor_env(tmp_path, keyring_backend="keyring_file_backend.HangingKeyring")
    done = run_doctor(write_config(tmp_path, (node, entry)), env)
    assert done.returncode == exitcodes.OK, done.stdout
    [warning] = lines(done.stdout, "warn", "keyring")
    assert "did not answer within" in warning
    assert lines(done.stdout, "ok  ", "token")[0].startswith("ok    token: none yet: will be generated")


# ---------------------------------------------------------------- directories and the control socket

def test_control_socket_that_does_not_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    node, entry = fake_install(tmp_path)
    path = tmp_path / "run" / "control.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as mute, socket.socket() as listener:
        mute.bind(str(path))
        mute.listen()  # accepts into the backlog, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        findings, _ = doctor.diagnose(str(write_config(tmp_path, (node, entry), gateway={"port": port})))
    by_topic = {f.topic: f for f in findings}
    assert by_topic["control socket"].level is doctor.Level.WARN
    assert str(path) in by_topic["control socket"].text and "no answer" in by_topic["control socket"].text
    held = by_topic["gateway.port"]
    assert held.level is doctor.Level.WARN and f"pid {os.getpid()}" in held.text and "unknown" in held.text


def test_stale_socket_and_open_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate(monkeypatch, tmp_path)
    node, entry = fake_install(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    path = tmp_path / "run" / "control.sock"
    path.parent.mkdir()
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening: what a crashed run leaves behind
    findings, _ = doctor.diagnose(str(write_config(tmp_path, (node, entry))))
    by_topic = {f.topic: f for f in findings}
    assert by_topic["control socket"].level is doctor.Level.OK
    assert by_topic["control socket"].text.startswith("clawsvc is not running")
    assert by_topic["state dir"].level is doctor.Level.WARN and f"chmod 700 {state}" in by_topic["state dir"].text
    assert stat_mode(state) == 0o755, "doctor changes nothing"


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_doctor_repeats_what_the_service_says_of_a_gateway_it_cannot_reach() -> None:
    """The same line as `clawsvc status` and STATUS=: a rejected token is a FAIL naming the fix."""
    from clawsvc.commands.doctor.gatewayside import check_service
    from clawsvc.service.status import Snapshot, State

    cause = ("gateway pid 7 rejects clawsvc's token: its own config /s/openclaw.json sets gateway.auth.token, which "
             "wins over clawsvc's; run `sudo clawsvc doctor --fix` (it keeps serving meanwhile; asked again every 30s)")
    snap = Snapshot(State.RECONNECTING, 7, 18789, True, "2026.9.6", None, None, None, cause, 0, 0, None, 9, 0.0,
                    None, 10)
    (finding,) = check_service(snap)
    assert finding.line() == f"FAIL  service: reconnecting: {cause}"
    assert check_service(None) == [] and check_service(replace(snap, state=State.RUNNING)) == []
