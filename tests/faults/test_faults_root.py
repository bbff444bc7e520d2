"""Root never runs what another user can write: a `node` named by gateway.command that another user owns, or the
service user owns, is never run by root, whatever root runs: check-config, doctor, install, `run` and its reload,
the upgrade's canary. Each fake node writes the uid it runs as into a marker file, so an empty marker proves it
never ran, and a marker holding the service user's uid proves the examination ran as that user, not as root.

The users are real (useradd, removed afterwards). The service user is the throwaway user here: the CLI runs with
clawsvc.users.SERVICE_USER set to its name (AS_SERVICE), the one name clawsvc looks the `clawsvc` user up by.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from faultkit import Services, ready, spawned, stops_clean
from localusers import throwaway_user

from clawsvc import exitcodes
from clawsvc.commands.upgrade import canary
from clawsvc.config import Config, GatewayConfig

HUNG = 120.0
ENGINES = ">=24.16 <25 || >=26.1"
# A `clawsvc` (as install names itself in ExecStart=: a script called clawsvc, not `python -c`, and not the
# checkout's .venv/bin/clawsvc, which install refuses where the checkout is below /tmp) that runs this Python's
# clawsvc with SERVICE_USER set to its first argument.
AS_SERVICE = """#!/bin/sh
"exec" {python} "$0" "$@"
import sys
import clawsvc.users
clawsvc.users.SERVICE_USER = sys.argv[1]
from clawsvc.cli import main
sys.exit(main(sys.argv[2:]))
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root-run paths, and chown to other users")


@dataclass(frozen=True)
class Chain:
    """A node (its owner chosen by the test) in a root-owned dir, openclaw's entry script and package.json
    (root's), a marker file every node appends its uid to, and a config naming them, below a root dir others
    may pass through (so the service user can run its node)."""

    root: Path
    marker: Path
    entry: Path

    def node(self, owner: pwd.struct_passwd | None) -> Path:
        uid = 0 if owner is None else owner.pw_uid
        node = self.root / f"bin-{uid}" / "node"
        node.parent.mkdir(mode=0o755, exist_ok=True)
        node.write_text(f"#!/bin/sh\nid -u >> {self.marker}\necho v24.21.0\n")
        node.chmod(0o755)
        os.chown(node, uid, 0 if owner is None else owner.pw_gid)
        return node

    def config(self, node: Path, name: str = "clawsvc.yaml") -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump({
            "gateway": {"command": [str(node), str(self.entry)], "port": 1, "state_dir": str(self.root / "state"),
                        "compile_cache": False},
            "providers": [], "control": {"socket": str(self.root / "ctl" / "control.sock")}}))
        return path

    def ran_as(self) -> list[int]:
        return [int(line) for line in self.marker.read_text().split()]


@pytest.fixture
def chain() -> Iterator[Chain]:
    root = Path(tempfile.mkdtemp(prefix="clawsvc-root-faults-", dir="/run"))  # not /tmp: install refuses it
    try:
        root.chmod(0o711)
        marker = root / "marker"
        marker.write_text("")
        marker.chmod(0o666)  # whoever a node runs as may say so
        entry = root / "openclaw" / "openclaw.mjs"
        entry.parent.mkdir(mode=0o755)
        entry.write_text("// not a gateway\n")
        (entry.parent / "package.json").write_text(json.dumps({"version": "2026.9.6", "engines": {"node": ENGINES}}))
        yield Chain(root, marker, entry)
    finally:
        shutil.rmtree(root)


@pytest.fixture(scope="module", autouse=True)
def as_service() -> Iterator[None]:
    global as_service_launcher
    top = Path(tempfile.mkdtemp(prefix="clawsvc-root-launcher-", dir="/run"))
    try:
        top.chmod(0o755)
        as_service_launcher = top / "clawsvc"
        as_service_launcher.write_text(AS_SERVICE.format(python=json.dumps(sys.executable)))
        as_service_launcher.chmod(0o755)
        yield
    finally:
        shutil.rmtree(top)


as_service_launcher = Path("/nonexistent")


@pytest.fixture
def service_user() -> Iterator[pwd.struct_passwd]:
    with throwaway_user() as user:
        yield user


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    with throwaway_user() as user:
        yield user


def as_root(service: pwd.struct_passwd | str, *args: str) -> subprocess.CompletedProcess[str]:
    """`clawsvc ARGS` as root on a host whose service user is `service` (a user, or a name no user has)."""
    name = service if isinstance(service, str) else service.pw_name
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CLAWSVC_CONFIG", "INVOCATION_ID")}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    return subprocess.run([str(as_service_launcher), name, *args], env=env, capture_output=True,
                          text=True, timeout=HUNG, stdin=subprocess.DEVNULL, cwd="/")


# ---------------------------------------------------------------- check-config, doctor, install

ROOT_COMMANDS = {
    "check-config": ("check-config", "-c"),
    "doctor": ("doctor", "-c"),
    "install": ("install", "--system", "--dry-run", "-c"),
}


@pytest.mark.parametrize("command", ROOT_COMMANDS.values(), ids=ROOT_COMMANDS.keys())
def test_a_node_of_another_user_is_refused_and_never_run(chain: Chain, service_user: pwd.struct_passwd,
                                                          other_user: pwd.struct_passwd,
                                                          command: tuple[str, ...]) -> None:
    node = chain.node(other_user)
    done = as_root(service_user, *command, str(chain.config(node)))
    refusal = f"gateway.command {node} is owned by user {other_user.pw_name} (uid {other_user.pw_uid})"
    if command[0] == "install":  # not used as is; whether the plan for a new one can go on depends on this host
        assert done.returncode in (exitcodes.OK, exitcodes.FAIL) and "kept" not in done.stdout, done.stderr
    else:
        assert done.returncode == (exitcodes.CONFIG if command[0] == "check-config" else exitcodes.FAIL), done.stderr
        assert refusal in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert chain.ran_as() == []


@pytest.mark.parametrize("command", ROOT_COMMANDS.values(), ids=ROOT_COMMANDS.keys())
def test_a_node_of_the_service_user_is_examined_as_that_user_never_as_root(
        chain: Chain, service_user: pwd.struct_passwd, command: tuple[str, ...]) -> None:
    done = as_root(service_user, *command, str(chain.config(chain.node(service_user))))
    assert done.returncode == exitcodes.OK, done.stdout + done.stderr
    if command[0] == "doctor":
        assert "ok    gateway.command: node 24.21.0" in done.stdout and f"needs node {ENGINES}" in done.stdout
    if command[0] == "install":
        assert "kept" in done.stdout  # judged as the service would: its config is used as is
    assert chain.ran_as() == [service_user.pw_uid]  # once, as the service user


def test_root_check_config_without_a_service_user_refuses_that_users_node(
        chain: Chain, service_user: pwd.struct_passwd) -> None:
    node = chain.node(service_user)
    done = as_root(f"clawsvc-absent-{os.getpid()}", "check-config", "-c", str(chain.config(node)))  # root only
    assert done.returncode == exitcodes.CONFIG
    assert f"gateway.command {node} is owned by user {service_user.pw_name}" in done.stderr
    assert chain.ran_as() == []


def test_a_root_owned_chain_is_examined_by_root(chain: Chain, service_user: pwd.struct_passwd) -> None:
    done = as_root(service_user, "check-config", "-c", str(chain.config(chain.node(None))))
    assert done.returncode == exitcodes.OK, done.stderr
    assert chain.ran_as() == [0]


# ---------------------------------------------------------------- `run` and its reload

@pytest.mark.parametrize("owner", ["service user", "another user"])
def test_a_root_run_and_its_reload_never_run_a_node_of_another_user(
        services: Services, chain: Chain, service_user: pwd.struct_passwd, other_user: pwd.struct_passwd,
        owner: str) -> None:
    """A root `run` trusts root alone: the service user's node is no better than a stranger's."""
    user = service_user if owner == "service user" else other_user
    node = chain.node(user)
    svc = services.start()
    pid = ready(svc)["pid"]
    settings = yaml.safe_load(svc.config_path.read_text())
    settings["gateway"]["command"] = [str(node), str(chain.entry)]
    svc.rewrite_config(settings)
    mark = svc.peer.mark()
    svc.send_signal(signal.SIGHUP)
    failed = svc.peer.wait_for(r"^READY=1\nSTATUS=running .*\(reload failed: ", 20, since=mark)
    assert f"{node} is owned by user {user.pw_name}" in svc.log(), failed.text
    assert svc.status()["pid"] == pid and spawned(svc) == [pid]
    assert chain.ran_as() == []
    stops_clean(svc)
    started = services.start(extra={"gateway": {"command": [str(node), str(chain.entry)]}},
                             root=svc.root / "again")  # from the start: refused before anything runs
    assert started.wait(HUNG) == exitcodes.CONFIG
    assert f"{node} is owned by user {user.pw_name}" in started.log() and spawned(started) == []
    assert chain.ran_as() == []


# ---------------------------------------------------------------- the upgrade's canary

def test_the_canary_never_runs_a_node_of_another_user(chain: Chain, other_user: pwd.struct_passwd,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    node = chain.node(other_user)
    copies: list[Path] = []
    monkeypatch.setattr(canary, "copy_state", lambda source, dest, warn: copies.append(source))
    config = Config(gateway=GatewayConfig(state_dir=chain.root / "state", compile_cache=None))
    with pytest.raises(canary.CanaryFailed, match=f"{node} is owned by user {other_user.pw_name}"):
        canary.run_canary(config, (str(node), str(chain.entry)))
    assert copies == [] and chain.ran_as() == []
