"""`clawsvc check-config` as an admin runs it: the real command in a subprocess, exit codes and output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from localusers import shared_group

REPO = Path(__file__).resolve().parents[1]


def shipped(name: str, tmp_path: Path) -> Path:
    """A copy of the checkout's etc/NAME in a directory of the test's own (as dev.sh and install copy them): the
    checkout itself may sit in a group-writable directory, which the trust rules rightly refuse."""
    copy = tmp_path / "etc" / name
    copy.parent.mkdir(mode=0o755, exist_ok=True)
    copy.write_text((REPO / "etc" / name).read_text())
    copy.chmod(0o644)
    return copy


@pytest.fixture(autouse=True)
def openclaw_on_path(tmp_path_factory, monkeypatch):
    """check-config checks gateway.command as `run` does, and the shipped configs name `openclaw` on PATH."""
    bin_dir = tmp_path_factory.mktemp("bin")
    fake = bin_dir / "openclaw"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return fake


def check_config(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "CLAWSVC_CONFIG"}
    return subprocess.run([sys.executable, "-m", "clawsvc", "check-config", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env={**base, **(env or {})}, check=False)


def test_example_is_valid(tmp_path):
    example = shipped("clawsvc.yaml", tmp_path)
    done = check_config("-c", example)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{example}: ok\n", "")


def test_dev_config_is_valid(tmp_path):
    done = check_config("-c", shipped("clawsvc-dev.yaml", tmp_path))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("text", "line", "key"), [
    ("gateway:\n  port: 70000\n", 2, "gateway.port"),
    ("# comment\nlogging:\n  levle: debug\n", 3, "logging.levle"),
    ("reconnect:\n  base_delay: 5s\n  max_delay: 2s\n", 3, "reconnect.max_delay"),
    ("gateway:\n  env:\n    MY_API_KEY: [sk-live-123456]\n", 3, "gateway.env.MY_API_KEY"),
    ("providers:\n  - openai\n  - 'Open AI'\n", 3, "providers[1]"),
])
@pytest.mark.parametrize("extra", [[], ["--print"]])
def test_bad_config_exits_78_with_one_line(tmp_path, text, line, key, extra):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    done = check_config("-c", path, *extra)
    assert done.returncode == 78
    assert done.stdout == ""
    assert done.stderr.startswith(f"clawsvc: {path}:{line}: {key}: ")
    assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n")
    assert "Traceback" not in done.stderr and "sk-live-123456" not in done.stderr


def test_yaml_syntax_error_exits_78_with_the_line(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("gateway:\n  port: 1\n\tbind: lan\n")
    done = check_config("-c", path)
    assert done.returncode == 78
    assert done.stderr.startswith(f"clawsvc: {path}:3: YAML syntax error")
    assert done.stderr.count("\n") == 1


def test_print_shows_effective_config_with_secrets_redacted(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("gateway:\n  port: 4242\n  env:\n    MY_API_KEY: sk-live-123456\n    SLACK_TOKEN: xoxb-998877\n"
                    "    LOG_FORMAT: json\nhealth:\n  interval: 1m\n")
    done = check_config("-c", path, "--print")
    assert done.returncode == 0, done.stderr
    assert "sk-live-123456" not in done.stdout + done.stderr
    assert "xoxb-998877" not in done.stdout + done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["gateway"]["port"] == 4242
    assert shown["gateway"]["env"] == {"MY_API_KEY": "<redacted>", "SLACK_TOKEN": "<redacted>", "LOG_FORMAT": "json"}
    assert shown["health"] == {"interval": 60.0, "timeout": 5.0, "failures": 3, "tick_grace": 2.0,
                              "not_ready_after": 300.0}
    assert shown["providers"] == ["anthropic", "openai", "google", "openrouter"]  # defaults filled in
    assert str(path) in done.stdout.splitlines()[0]
    # what --print shows is itself a valid config
    printed = tmp_path / "printed.yaml"
    printed.write_text(done.stdout)
    assert check_config("-c", printed).returncode == 0


def test_missing_named_file(tmp_path):
    path = tmp_path / "nope.yaml"
    done = check_config("-c", path)
    assert done.returncode == 78
    assert done.stderr == f"clawsvc: {path}: config file not found\n"


def test_unreadable_path(tmp_path):
    done = check_config("-c", tmp_path)  # a directory: unreadable as a file even for root
    assert done.returncode == 78
    assert done.stderr.startswith(f"clawsvc: {tmp_path}: cannot read config file: ")
    assert "Is a directory" in done.stderr and done.stderr.count("\n") == 1


def test_config_from_environment(tmp_path):
    path = tmp_path / "env.yaml"
    path.write_text("gateway:\n  bind: moon\n")
    done = check_config(env={"CLAWSVC_CONFIG": str(path)})
    assert done.returncode == 78
    assert done.stderr.startswith(f"clawsvc: {path}:2: gateway.bind: ")
    path.write_text("gateway:\n  bind: lan\n")
    assert check_config(env={"CLAWSVC_CONFIG": str(path)}).stdout == f"{path}: ok\n"
    example = shipped("clawsvc.yaml", tmp_path)
    assert check_config("-c", example, env={"CLAWSVC_CONFIG": str(tmp_path / "missing.yaml")}).returncode == 0


def test_a_command_run_could_not_start_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    missing = tmp_path / "gone" / "openclaw"
    path.write_text(f"gateway:\n  command: [{missing}]\n  state_dir: {tmp_path / 'state'}\nproviders: []\n")
    done = check_config("-c", path)
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1 and str(missing) in done.stderr and "gateway-install" in done.stderr
    path.write_text(f"gateway:\n  state_dir: {tmp_path / 'state'}\nproviders: []\n")
    assert check_config("-c", path).returncode == 0, "the same config with a command that exists is fine"


@pytest.mark.parametrize("what", ["program", "entry script"])
@pytest.mark.parametrize("how", ["foreign owner", "group-writable"])
def test_a_gateway_command_another_user_can_change_is_refused(tmp_path, what, how):
    if os.geteuid() != 0 and how == "foreign owner":
        pytest.skip("giving a file to another user needs root")
    program = tmp_path / "gateway-launcher"  # not "node": the engines check would want a package.json
    program.write_text("#!/bin/sh\nexit 0\n")
    entry = tmp_path / "openclaw.mjs"
    entry.write_text("// entry\n")
    program.chmod(0o755)
    entry.chmod(0o644)
    path = tmp_path / "c.yaml"
    path.write_text(f"gateway:\n  command: [{program}, {entry}]\n  state_dir: {tmp_path / 'state'}\nproviders: []\n")
    assert check_config("-c", path).returncode == 0, "trusted files pass"
    target = program if what == "program" else entry
    if how == "foreign owner":
        os.chown(target, 65534, -1)
    else:
        shared_group(target)  # root:root would be root's private group
        target.chmod(0o775 if what == "program" else 0o664)
    done = check_config("-c", path)
    assert done.returncode == 78, done.stderr
    assert done.stderr.count("\n") == 1 and f"gateway.command {target}" in done.stderr
    assert ("chown" if how == "foreign owner" else "chmod go-w") in done.stderr


def test_a_missing_token_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    token = tmp_path / "token"
    path.write_text(f"gateway:\n  state_dir: {tmp_path / 'state'}\nauth:\n  token_file: {token}\nproviders: []\n")
    done = check_config("-c", path)
    assert done.returncode == 78 and done.stderr.count("\n") == 1 and str(token) in done.stderr, done.stderr
    token.write_text("t" * 32 + "\n")
    token.chmod(0o600)
    assert check_config("-c", path).returncode == 0


def test_an_unknown_control_group_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"gateway:\n  state_dir: {tmp_path / 'state'}\ncontrol:\n  group: no-such-group-xyz\n")
    done = check_config("-c", path)
    assert done.returncode == 78
    assert done.stderr == "clawsvc: control.group: no group named 'no-such-group-xyz' on this system; create it " \
                          "or unset control.group\n"


def test_print_cuts_very_long_strings(tmp_path):
    path = tmp_path / "c.yaml"
    long_value = "v" * 100_000
    path.write_text(f"gateway:\n  state_dir: {tmp_path / 'state'}\n  env:\n    LONG: {long_value}\n")
    done = check_config("-c", path, "--print")
    assert done.returncode == 0, done.stderr
    assert long_value not in done.stdout and len(done.stdout) < 10_000
    assert yaml.safe_load(done.stdout)["gateway"]["env"]["LONG"] == "v" * 60 + "… (100000 characters, cut)"
