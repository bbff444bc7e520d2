"""`clawsvc openclaw ARGS` (clawsvc/commands/runtime/gatewaycli.py) with a stand-in for the gateway's CLI that
reports who it runs as, where, with what; the real CLI through it: tests/test_assistant_real.py and
tests/test_systemd_assistant.py. As root: the CLI runs as the state dir's owner, the token only in its
environment, what it writes stays that user's; on a terminal it cannot push keystrokes into root's (TIOCSTI)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from localusers import reachable_dir, throwaway_user
from terminal import on_a_terminal, read_until
from waiting import poll

from clawsvc.commands.runtime import gatewaycli
from clawsvc.config import Config, GatewayConfig

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running as the service's user needs root")

STAND_IN = """#!/usr/bin/python3
import fcntl, hashlib, os, signal, sys, termios
token = os.environ.get("OPENCLAW_GATEWAY_TOKEN", "")
print("uid", os.getuid(), "gid", os.getgid(), "groups", sorted(os.getgroups()), flush=True)
print("cwd", os.getcwd(), "home", os.environ.get("HOME"), "state", os.environ.get("OPENCLAW_STATE_DIR"), flush=True)
print("token-sha", hashlib.sha256(token.encode()).hexdigest(), "argv", sys.argv[1:], flush=True)
open("written-by-the-cli", "w").close()
if sys.argv[1:2] == ["tiocsti"]:
    try:
        fcntl.ioctl(0, termios.TIOCSTI, b"x")
        print("tiocsti worked", flush=True)
    except OSError as exc:
        print("tiocsti refused", exc.errno, flush=True)
if sys.argv[1:2] == ["devtty"]:  # its stdio no terminal, but root's terminal still its controlling one
    try:
        fcntl.ioctl(os.open("/dev/tty", os.O_RDWR), termios.TIOCSTI, b"x")
        print("tiocsti worked", flush=True)
    except OSError as exc:
        print("tiocsti refused", exc.errno, flush=True)
if sys.argv[1:2] == ["linger"]:  # a child that outlives the CLI with root's terminal open, reading it
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        open("lingerer.pid", "w").write(str(os.getpid()))
        os.close(ready_w)
        signal.alarm(60)
        with open("overheard", "ab", buffering=0) as heard:
            while data := os.read(0, 100):
                heard.write(data)
        os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)  # its pid is written
    print("lingering", flush=True)
if sys.argv[1:2] == ["wait"]:
    print("waiting", flush=True)
    signal.pause()
sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
"""


# `clawsvc` itself, with the test's throwaway user standing in for the service user `clawsvc` (whom root's
# commands judge as: trust.judged_as_the_service) and nothing else changed.
AS_SERVICE_USER = """import sys
import clawsvc.config.model, clawsvc.trust, clawsvc.users
uid = int(sys.argv.pop(1))
for module in (clawsvc.trust, clawsvc.users, clawsvc.config.model):
    module.service_uid = lambda: uid
from clawsvc import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@dataclass
class Setup:
    config: Path
    state: Path
    token: str
    uid: int
    gid: int

    def argv(self, *words: str) -> list[str]:
        return [sys.executable, "-c", AS_SERVICE_USER, str(self.uid), "openclaw", "-c", str(self.config), *words]


@pytest.fixture
def setup() -> Iterator[Setup]:
    """A service user's state dir, root's token file (0600) and a stand-in CLI, all where that user can reach."""
    with throwaway_user() as user, reachable_dir() as top:
        program = top / "openclaw"
        program.write_text(STAND_IN)
        program.chmod(0o755)
        state = top / "state"
        state.mkdir(mode=0o700)
        os.chown(state, user.pw_uid, user.pw_gid)
        token = secrets.token_urlsafe(32)
        (top / "token").write_text(token + "\n")
        (top / "token").chmod(0o600)
        config = top / "clawsvc.yaml"
        config.write_text(f"gateway:\n  command: [{program}]\n  state_dir: {state}\n  port: 19456\n"
                          f"  compile_cache: false\nauth:\n  token_file: {top / 'token'}\nproviders: []\n")
        yield Setup(config, state, token, user.pw_uid, user.pw_gid)


def clean_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), "LANG": "C.UTF-8", "TERM": "xterm-test"}


def test_as_root_it_runs_as_the_service_user_with_the_services_environment(setup: Setup) -> None:
    done = subprocess.run(setup.argv("health", "--json", "7"), capture_output=True, text=True, timeout=120,
                          env=clean_env())
    assert done.returncode == 7, done.stderr  # the CLI's own exit status
    lines = done.stdout.splitlines()
    assert lines[0] == f"uid {setup.uid} gid {setup.gid} groups [{setup.gid}]"
    assert lines[1] == f"cwd {setup.state} home /nonexistent state {setup.state}"
    assert lines[2] == (f"token-sha {hashlib.sha256(setup.token.encode()).hexdigest()} "
                        "argv ['health', '--json', '7']")
    assert setup.token not in done.stdout + done.stderr
    written = setup.state / "written-by-the-cli"
    assert (written.stat().st_uid, written.stat().st_gid) == (setup.uid, setup.gid)


def test_its_environment_is_the_gateways_on_the_units_base(setup: Setup) -> None:
    config = Config(gateway=GatewayConfig(command=("openclaw",), state_dir=setup.state, port=19456,
                                          compile_cache=None, env={"EXTRA": "1"}))
    account = gatewaycli.Account(setup.uid, setup.gid, "svc", "/var/lib/svc")
    caller = {"TERM": "xterm", "LC_ALL": "de_DE.UTF-8", "SSH_AUTH_SOCK": "/tmp/agent", "HOME": "/root",
              "OPENCLAW_STATE_DIR": "/root/.openclaw", "PATH": "/root/bin:/usr/bin"}
    env = gatewaycli.cli_env(config, "t" * 32, {"ANTHROPIC_API_KEY": "sk-x"}, account, caller)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/var/lib/svc", "svc", "svc")
    assert env["PATH"] == gatewaycli.SERVICE_PATH and (env["TERM"], env["LC_ALL"]) == ("xterm", "de_DE.UTF-8")
    assert "SSH_AUTH_SOCK" not in env and env["OPENCLAW_STATE_DIR"] == str(setup.state)
    assert (env["OPENCLAW_GATEWAY_TOKEN"], env["ANTHROPIC_API_KEY"], env["EXTRA"]) == ("t" * 32, "sk-x", "1")
    assert env["OPENCLAW_GATEWAY_PORT"] == "19456" and env["OPENCLAW_SUPERVISOR_MODE"] == "external"
    assert "OPENCLAW_GATEWAY_TOKEN" not in gatewaycli.cli_env(config, None, {}, account, caller)


def test_anyone_else_is_refused_in_one_line(setup: Setup) -> None:
    with throwaway_user() as other:
        done = subprocess.run(["setpriv", "--reuid", str(other.pw_uid), "--regid", str(other.pw_gid),
                               "--clear-groups", "--", *setup.argv("health")], capture_output=True, text=True,
                              timeout=120, env=clean_env())
    assert done.returncode == gatewaycli.CANNOT_RUN
    service = subprocess.run(["id", "-un", str(setup.uid)], capture_output=True, text=True, check=True).stdout.strip()
    assert done.stderr == (f"clawsvc openclaw: the gateway's CLI runs as {service}, the user the service runs as: "
                           f"run it as root (sudo clawsvc openclaw ...) or as {service}; members of control.group "
                           "have `clawsvc rpc METHOD` and `clawsvc dashboard`\n")
    assert not (setup.state / "written-by-the-cli").exists()


def test_before_the_first_start_it_says_so(setup: Setup) -> None:
    os.rmdir(setup.state)
    done = subprocess.run(setup.argv("health"), capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == gatewaycli.CANNOT_RUN
    assert done.stderr.strip().endswith("does not exist yet: the service makes it at its first start (sudo systemctl "
                                        "start clawsvc)")


@pytest.mark.skipif(Path("/proc/sys/dev/tty/legacy_tiocsti").read_text().strip() == "0"
                    if Path("/proc/sys/dev/tty/legacy_tiocsti").exists() else False,
                    reason="the kernel refuses TIOCSTI to everyone: the CLI is exec'd on the terminal")
def test_on_roots_terminal_the_cli_cannot_push_keystrokes_into_it(setup: Setup) -> None:
    """The service user's CLI on root's terminal: in a session of its own it still reads and writes the terminal,
    but TIOCSTI (typing into root's shell after it exits) is refused."""
    with on_a_terminal(setup.argv("tiocsti", "3"), clean_env()) as (proc, master):
        seen = read_until(master, "tiocsti ")
        assert proc.wait(60) == 3
    assert f"uid {setup.uid} " in seen
    assert f"tiocsti refused {errno.EPERM}" in seen and "tiocsti worked" not in seen


@pytest.mark.skipif(Path("/proc/sys/dev/tty/legacy_tiocsti").read_text().strip() == "0"
                    if Path("/proc/sys/dev/tty/legacy_tiocsti").exists() else False,
                    reason="the kernel refuses TIOCSTI to everyone: the CLI is exec'd on the terminal")
def test_with_its_output_redirected_in_roots_shell_the_cli_cannot_push_keystrokes_through_dev_tty(
        setup: Setup, tmp_path: Path) -> None:
    """`sudo clawsvc openclaw ... </dev/null >out 2>&1`: no stdio is a terminal, yet root's terminal is still the
    controlling one, which the service user's CLI could open as /dev/tty."""
    out = tmp_path / "out"
    redirected = ["sh", "-c", f'exec "$@" </dev/null >{out} 2>&1', "sh", *setup.argv("devtty", "3")]
    with on_a_terminal(redirected, clean_env()) as (proc, _master):
        assert proc.wait(60) == 3
    said = out.read_text()
    assert f"uid {setup.uid} " in said
    assert "tiocsti refused" in said and "tiocsti worked" not in said


def test_what_the_cli_leaves_on_roots_terminal_is_killed_when_it_ends(setup: Setup) -> None:
    """A process the CLI forks keeps root's terminal and would read what root types next (a password)."""
    with on_a_terminal(setup.argv("linger", "0"), clean_env()) as (proc, master):
        try:
            seen = read_until(master, "the CLI left behind with this terminal open")
            assert proc.wait(60) == 0
            lingerer = int((setup.state / "lingerer.pid").read_text())
            poll(lambda: not alive(lingerer), 30, "the lingering process to be gone")
        finally:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, ValueError):
                os.kill(int((setup.state / "lingerer.pid").read_text()), signal.SIGKILL)
    assert f"stopped 1 process(es) of {pwd.getpwuid(setup.uid).pw_name} the CLI left behind" in seen
    assert f"(pid {lingerer})" in seen


def alive(pid: int) -> bool:
    """Running, not a zombie: a process that still holds its descriptors."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_on_a_terminal_ctrl_c_reaches_the_cli(setup: Setup) -> None:
    with on_a_terminal(setup.argv("wait"), clean_env()) as (proc, master):
        read_until(master, "waiting")
        os.kill(proc.pid, signal.SIGINT)  # what the terminal sends the foreground job, clawsvc
        assert proc.wait(60) == 128 + signal.SIGINT
