"""Bad inputs: every one ends in exit 78 and ONE line from both `check-config` and `run`, in seconds and well
under 500 MB (alias bombs, 400-digit numbers, absurd durations, NUL and newline in paths, an over-long socket
path, a 50 MB file, a FIFO, a directory, /dev/zero); and a reload with such an input keeps the service
running on the old config."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from double import python
from faultkit import HUNG, Services, cli, ready, spawned, stops_clean, write_config
from service_proc import STRIPPED

from clawsvc import exitcodes
from clawsvc.config import default_control_socket

MEMORY = 500_000_000  # bytes of address space each clawsvc gets (prlimit --as)
QUICK = 10.0  # seconds a refusal may take on a loaded 2-core machine; the real figure is well under one
BIG = 50 * 1024 * 1024


def billion_laughs(levels: int = 9) -> str:
    """gateway.port as a list whose last element expands to 9**9 strings: without a bound, the error message
    ("expected an integer, got list [...]") alone would need gigabytes."""
    lines = ["gateway:", "  port:", "    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels):
        lines.append(f"    - &l{level} [{', '.join([f'*l{level - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


@dataclass
class Outcome:
    code: int
    stderr: str
    seconds: float


@dataclass
class Refusals:
    """`python -m clawsvc COMMAND -c FILE` under a memory limit; a process still there after `QUICK * 2` seconds
    is killed with its whole group (and the test fails), so nothing is left behind."""

    root: Path
    running: list[subprocess.Popen[str]]

    def run(self, command: str, config: Path) -> Outcome:
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
        argv = ["prlimit", f"--as={MEMORY}", sys.executable, "-m", "clawsvc", command, "-c", str(config)]
        started = time.monotonic()
        popen = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=self.root)
        self.running.append(popen)
        try:
            _, err = popen.communicate(timeout=QUICK * 2)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`clawsvc {command} -c {config}` still running after {QUICK * 2}s") from None
        return Outcome(popen.returncode, err, time.monotonic() - started)

    def close(self) -> None:
        for popen in self.running:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.communicate()


@pytest.fixture
def refusals(tmp_path: Path) -> Iterator[Refusals]:
    started = Refusals(tmp_path, [])
    yield started
    started.close()


def assert_refused(refusals: Refusals, config: Path, *words: str) -> None:
    """check-config and run both: exit 78, one line on stderr naming what is wrong, no traceback, quickly."""
    for command in ("check-config", "run"):
        outcome = refusals.run(command, config)
        assert outcome.code == exitcodes.CONFIG, f"{command}: exit {outcome.code}: {outcome.stderr[-2000:]}"
        assert outcome.stderr.count("\n") == 1 and outcome.stderr.endswith("\n"), f"{command}: {outcome.stderr!r}"
        assert "Traceback" not in outcome.stderr
        assert len(outcome.stderr) < 600, f"{command} echoed too much: {len(outcome.stderr)} characters"
        for word in words:
            assert word in outcome.stderr, f"{command}: {outcome.stderr!r}"
        assert outcome.seconds < QUICK, f"{command} took {outcome.seconds:.1f}s"


# ---------------------------------------------------------------- bad inputs at start

def test_alias_bomb(refusals: Refusals, tmp_path: Path) -> None:
    config = tmp_path / "bomb.yaml"
    config.write_text(billion_laughs())
    assert_refused(refusals, config, "expands through YAML aliases")


def test_recursive_alias(refusals: Refusals, tmp_path: Path) -> None:
    config = tmp_path / "loop.yaml"
    config.write_text("gateway:\n  command: &loop [node, *loop]\n")
    assert_refused(refusals, config, "gateway.command[1]", "recursive")


def test_deep_nesting(refusals: Refusals, tmp_path: Path) -> None:
    config = tmp_path / "deep.yaml"
    config.write_text("gateway:\n  command: " + "[" * 200_000 + "]" * 200_000 + "\n")
    assert_refused(refusals, config, "nested more than")


def test_400_digit_port(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {})
    config.write_text(re.sub(r"port: \d+", "port: " + "9" * 400, config.read_text()))
    assert_refused(refusals, config, "gateway.port: a number of 400 digits is out of range")


def test_400_digit_duration(refusals: Refusals, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("gateway:\n  stop_timeout: " + "9" * 400 + "\n")
    assert_refused(refusals, config, "gateway.stop_timeout: a number of 400 digits is out of range")


def test_400_digit_duration_string(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"gateway": {"stop_timeout": "9" * 400 + "s"}})
    assert_refused(refusals, config, "gateway.stop_timeout: must be at most 1 day")


@pytest.mark.parametrize("value", ["1e300", "1.0e+300", "10000d", "10000h", "86401", ".inf", ".nan", "-.inf"])
def test_absurd_stop_timeout(refusals: Refusals, tmp_path: Path, value: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"gateway:\n  stop_timeout: {value}\n")
    assert_refused(refusals, config, "gateway.stop_timeout: ")


@pytest.mark.parametrize(("key", "value"), [("failures", 1000), ("tick_grace", 1e6)])
def test_absurd_health_counts(refusals: Refusals, tmp_path: Path, key: str, value: float) -> None:
    config = write_config(tmp_path, {"health": {key: value}})
    assert_refused(refusals, config, f"health.{key}: must be")


def test_absurd_max_attempts(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"reconnect": {"max_attempts": 10**9}})
    assert_refused(refusals, config, "reconnect.max_attempts: must be between 0 and 10000")


def test_nul_in_state_dir(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"gateway": {"state_dir": f"{tmp_path}/state\0x"}})
    assert "\\0" in config.read_text(), "the YAML carries the NUL as an escape"
    assert_refused(refusals, config, "gateway.state_dir: a path must not contain a NUL character")


def test_newline_in_token_file_path(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"auth": {"token_file": f"{tmp_path}/token\nx"}})
    assert_refused(refusals, config, "auth.token_file: a path must not contain a line break")


def test_nul_in_command(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"gateway": {"command": [python(), "double\0.py"]}})
    assert_refused(refusals, config, "gateway.command[1]: an argument must not contain a NUL character")


def test_nul_in_env_value(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"gateway": {"env": {"FOO": "a\0b"}}})
    assert_refused(refusals, config, "gateway.env.FOO: an environment value must not contain a NUL character")


def test_control_socket_path_of_200_characters(refusals: Refusals, tmp_path: Path) -> None:
    socket_path = tmp_path / ("s" * (200 - len(str(tmp_path)) - 1))
    assert len(str(socket_path)) == 200
    config = write_config(tmp_path, {"control": {"socket": str(socket_path)}})
    assert_refused(refusals, config, "control.socket: a unix socket path is at most 107 bytes")
    assert not socket_path.exists()


def test_a_50_mb_config_file(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {})
    with config.open("a") as out:  # valid YAML all the way: only the size is wrong
        line = "# " + "x" * 1021 + "\n"
        out.write(line * (BIG // len(line)))
    assert config.stat().st_size > BIG - 1024
    assert_refused(refusals, config, str(config), "larger than 1024 KiB")


def test_a_fifo_as_config_file(refusals: Refusals, tmp_path: Path) -> None:
    config = tmp_path / "fifo.yaml"
    os.mkfifo(config)  # nobody ever writes: a blocking open would hang forever
    assert_refused(refusals, config, str(config), "FIFO")


def test_a_directory_as_config_file(refusals: Refusals, tmp_path: Path) -> None:
    assert_refused(refusals, tmp_path, str(tmp_path), "Is a directory")


def test_dev_zero_as_config_file(refusals: Refusals) -> None:
    assert_refused(refusals, Path("/dev/zero"), "/dev/zero", "character device")


def test_a_control_character_in_the_file(refusals: Refusals, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"gateway:\n  port: 1\0\n")
    assert_refused(refusals, config, f"{config}:2: YAML syntax error")


# ---------------------------------------------------------------- check-config refuses what run refuses

def test_a_command_that_does_not_exist(refusals: Refusals, tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "openclaw.py"
    config = write_config(tmp_path, {"gateway": {"command": [str(missing)]}})
    assert_refused(refusals, config, str(missing), "clawsvc gateway-install")


def test_a_missing_entry_script(refusals: Refusals, tmp_path: Path) -> None:
    missing = tmp_path / "gone.py"
    config = write_config(tmp_path, {"gateway": {"command": [python(), str(missing)]}})
    assert_refused(refusals, config, str(missing))


def test_a_missing_token_file(refusals: Refusals, tmp_path: Path) -> None:
    missing = tmp_path / "no-token"
    config = write_config(tmp_path, {"auth": {"token_file": str(missing)}})
    assert_refused(refusals, config, str(missing))


def test_a_token_file_that_is_a_fifo(refusals: Refusals, tmp_path: Path) -> None:
    fifo = tmp_path / "token-fifo"
    os.mkfifo(fifo, 0o600)
    config = write_config(tmp_path, {"auth": {"token_file": str(fifo)}})
    assert_refused(refusals, config, str(fifo))


def test_a_token_too_short(refusals: Refusals, tmp_path: Path) -> None:
    token = tmp_path / "short-token"
    token.write_text("abc\n")
    token.chmod(0o600)
    config = write_config(tmp_path, {"auth": {"token_file": str(token)}})
    assert_refused(refusals, config, "too short")


def test_a_control_group_that_does_not_exist(refusals: Refusals, tmp_path: Path) -> None:
    config = write_config(tmp_path, {"control": {"group": "no-such-group-xyz"}})
    assert_refused(refusals, config, "control.group: no group named 'no-such-group-xyz'")


# ---------------------------------------------------------------- a reload with a bad input keeps the service

def _alias_bomb(config: Path) -> None:
    config.write_text(billion_laughs())


def _huge_file(config: Path) -> None:
    good = config.read_text()
    line = "# " + "x" * 1021 + "\n"
    config.write_text(good + line * (BIG // len(line)))


def _fifo(config: Path) -> None:
    config.unlink()
    os.mkfifo(config, 0o600)


def _400_digits(config: Path) -> None:
    config.write_text(config.read_text().replace("stop_timeout: 1.0", "stop_timeout: " + "9" * 400))


def _token_fifo(config: Path) -> None:
    token = Path(yaml.safe_load(config.read_text())["auth"]["token_file"])
    token.unlink()
    os.mkfifo(token, 0o600)


def _missing_command(config: Path) -> None:
    settings = yaml.safe_load(config.read_text())
    settings["gateway"]["command"] = [str(config.parent / "gone" / "openclaw")]
    config.write_text(yaml.safe_dump(settings))


BAD_RELOADS = {"alias-bomb": _alias_bomb, "50-mb-file": _huge_file, "fifo-config": _fifo,
               "400-digits": _400_digits, "fifo-token-file": _token_fifo, "missing-command": _missing_command}


@pytest.mark.parametrize("spoil", BAD_RELOADS.values(), ids=BAD_RELOADS.keys())
def test_a_bad_reload_keeps_the_service_on_the_old_config(services: Services, spoil: Callable[[Path], None]) -> None:
    svc = services.start()
    pid = ready(svc)["pid"]
    good = svc.root / "good.yaml"  # the CLI finds the control socket through a config it can read
    good.write_text(svc.config_path.read_text())
    assert "stop_timeout: 1.0" in good.read_text()
    spoil(svc.config_path)
    mark = svc.peer.mark()
    svc.send_signal(signal.SIGHUP)
    svc.peer.wait_for("^RELOADING=1", 10, since=mark)
    failed = svc.peer.wait_for(r"^READY=1\nSTATUS=running .*\(reload failed: ", 10, since=mark)
    assert "Traceback" not in svc.log()
    assert len(failed.text) < 1200
    assert svc.popen.poll() is None
    shown = subprocess.run([sys.executable, "-m", "clawsvc", "status", "--json", "-c", str(good)], capture_output=True,
                           text=True, timeout=HUNG, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["state"] == "running" and status["pid"] == pid and spawned(svc) == [pid]
    assert svc.request({"cmd": "rpc", "method": "health", "params": None, "timeout": 5})["ok"] is True
    stops_clean(svc)


# ---------------------------------------------------------------- the CLI after a reload of a broken file

def _bad_yaml(config: Path) -> None:
    config.write_text(config.read_text() + "gateway: [unclosed\n")


def _bad_value(config: Path) -> None:
    config.write_text(config.read_text().replace("stop_timeout: 1.0", "stop_timeout: forever"))


BROKEN = {"bad-yaml": _bad_yaml, "bad-value": _bad_value}


@pytest.mark.parametrize("spoil", BROKEN.values(), ids=BROKEN.keys())
def test_status_rpc_and_events_still_answer_when_the_file_on_disk_is_broken(
        services: Services, spoil: Callable[[Path], None]) -> None:
    """After an edit with a typo, `systemctl reload` keeps the old config running; the commands that ask the
    service read only what they need (control.socket) from the file, so the operator still sees it."""
    svc = services.start()
    pid = ready(svc)["pid"]
    spoil(svc.config_path)
    mark = svc.peer.mark()
    svc.send_signal(signal.SIGHUP)
    svc.peer.wait_for(r"^READY=1\nSTATUS=running .*\(reload failed: ", 10, since=mark)
    status = cli(svc, "status", "--json")
    assert status.returncode == 0 and status.stderr == "", status.stderr
    assert json.loads(status.stdout)["pid"] == pid
    health = cli(svc, "rpc", "health")
    assert health.returncode == 0 and json.loads(health.stdout)["ok"] is True, health.stderr
    events = cli(svc, "events", "--json", "--name", "reload")
    assert events.returncode == 0, events.stderr
    assert [json.loads(line)["payload"]["ok"] for line in events.stdout.splitlines()] == [False]
    stops_clean(svc)


def test_a_socket_that_cannot_be_read_falls_back_to_the_default_and_says_so(services: Services) -> None:
    svc = services.start()
    ready(svc)
    svc.config_path.write_text(svc.config_path.read_text().replace("socket: ", "socket: [", 1))
    status = cli(svc, "status")
    lines = status.stderr.splitlines()
    assert lines[0].startswith(f"clawsvc: {svc.config_path}:") and "YAML syntax error" in lines[0], status.stderr
    assert lines[0].endswith(f"; trying the default control socket {default_control_socket()}")
    assert status.returncode != exitcodes.CONFIG and "Traceback" not in status.stderr  # asked, whoever answers
    stops_clean(svc)


# ---------------------------------------------------------------- a version with a line break

def test_gateway_install_refuses_a_version_with_a_trailing_newline_before_npm(tmp_path: Path) -> None:
    """`--version $'2026.9.6\\n'` once passed an anchored `$` check and went to npm as root."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'npm-calls'}\n")
    (bin_dir / "npm").chmod(0o755)
    env = {**{k: v for k, v in os.environ.items() if k not in STRIPPED}, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "clawsvc", "gateway-install", "--version", "2026.9.6\n", "--prefix",
                           str(tmp_path / "prefix")], env=env, capture_output=True, text=True, timeout=HUNG,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == exitcodes.FAIL and done.stderr.count("\n") == 1, done.stderr
    assert "'2026.9.6\\n' is not an openclaw version, range or npm tag" in done.stderr
    assert not (tmp_path / "npm-calls").exists() and not (tmp_path / "prefix").exists()
