"""`clawsvc upgrade` on a farm prefix of gateway doubles: refusals, the canary (on a copy of the state), the switch,
rollback, pruning.

Each openclaw-<v> of the farm is a fake install (marker, entry, `node` link) whose `node` is a shell script
that sources the version's entry (setting DOUBLE_VERSION, or failing on purpose) and execs the double.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from double import DOUBLE_SCRIPT, double_command, free_port
from faults.faultkit import FAST
from hookkit import command_hook, recorded
from service_proc import STRIPPED, ServiceProcess, base_config, merge
from waiting import poll

from clawsvc.commands.runtime import links as gateway_links
from clawsvc.commands.runtime import provision as gateway_install
from clawsvc.commands.runtime.provision import MARKER
from clawsvc.commands.runtime.versions import prune
from clawsvc.commands.upgrade import main as upgrade_cmd

CANNOT_START = 'echo "boom: this version cannot start" >&2; exit 1'
NEVER_LISTENS = "DOUBLE_STARTUP_DELAY=1000; export DOUBLE_STARTUP_DELAY"
ONLY_IN_CANARY = ('case "$OPENCLAW_STATE_DIR" in */clawsvc-canary-*) ;; '
                  '*) echo "fails under the service" >&2; exit 1;; esac')
# like 2026.9.5 on a state 2026.9.6 migrated: the state dir's schema-18 file stands for the migrated database
REFUSES_NEWER_STATE = ('if [ -e "$OPENCLAW_STATE_DIR/schema-18" ]; then echo "Gateway refused startup because 1 '
                       'OpenClaw database schema(s) are newer than this build. supports 17" >&2; exit 78; fi')
SHOWS_ITS_STATE = ('echo "state: $(cat "$OPENCLAW_STATE_DIR/data/notes.txt") skip=$OPENCLAW_SKIP_CHANNELS'
                   '$OPENCLAW_SKIP_CRON$OPENCLAW_NO_AUTO_UPDATE key=[${ANTHROPIC_API_KEY:-none}${OPENAI_API_KEY:-none}]'
                   ' log=$(ls "$OPENCLAW_STATE_DIR"/*.log 2>/dev/null)" >&2; exit 1')
SHOWS_ITS_PATHS = 'echo "paths: $OPENCLAW_STATE_DIR $OPENCLAW_CONFIG_PATH" >&2; exit 1'
UPGRADE_TIMEOUT = 120.0


def fake_node(prefix: Path, name: str = "node-fake") -> Path:
    node = prefix / name / "bin" / "node"
    node.parent.mkdir(parents=True, exist_ok=True)
    node.write_text(f'#!/bin/sh\nif [ "$1" = --version ]; then echo v24.21.0; exit 0; fi\n'
                    'while case "$1" in -*) true;; *) false;; esac; do shift; done  # node options, as node\n'
                    f'entry=$1; shift\n. "$entry"\nexport DOUBLE_VERSION\nexec {sys.executable} {DOUBLE_SCRIPT} "$@"\n')
    node.chmod(0o755)
    return node


def add_version(prefix: Path, version: str, body: str = "", node_dir: str = "node-fake") -> None:
    node = prefix / node_dir / "bin" / "node"
    if not node.exists():
        fake_node(prefix, node_dir)
    path = gateway_links.version_dir(prefix, version)
    entry = path / gateway_links.ENTRY
    entry.parent.mkdir(parents=True)
    entry.write_text(f"DOUBLE_VERSION={version}\n{body}\n")
    (entry.parent / "package.json").write_text(json.dumps({"engines": {"node": ">=24.16 <25"}}))
    marker = {"openclaw": version, "node_version": "24.21.0", "node": f"{node_dir}/bin/node",
              "entry": str(entry.relative_to(prefix))}
    (path / MARKER).write_text(json.dumps(marker))
    gateway_links.ensure_node_link(path, node)


def farm(tmp_path: Path, current: str = "1.0.1", *others: tuple[str, str]) -> Path:
    prefix = tmp_path / "gw"
    add_version(prefix, current)
    for version, body in others:
        add_version(prefix, version, body)
    gateway_links.point(prefix, gateway_links.CURRENT, current)
    return prefix


def service_config(tmp_path: Path, prefix: Path) -> dict[str, Any]:
    config = merge(base_config(tmp_path / "svc", gateway_links.stable_command(prefix), free_port()), FAST)
    hook = {"on": ["upgrade.rolled-back"], "command": command_hook(tmp_path / "svc" / "rolled-back.jsonl")}
    return merge(config, {"gateway": {"env": {"DOUBLE_TICK_MS": "300"}}, "alerts": [hook]})


def write_config(tmp_path: Path, config: dict[str, Any]) -> Path:
    import yaml

    path = tmp_path / "clawsvc.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def services(tmp_path: Path):
    started: list[ServiceProcess] = []

    def start(prefix: Path, extra: dict[str, Any] | None = None) -> ServiceProcess:
        svc = ServiceProcess.start(tmp_path / "svc", merge(service_config(tmp_path, prefix), extra or {}))
        started.append(svc)
        svc.wait_state(lambda s: s["state"] == "running", 30, "the service running")
        return svc

    yield start
    for svc in started:
        svc.close()


def cli_env(tmp_path: Path) -> dict[str, str]:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    return dict(env, TMPDIR=str(scratch))


def upgrade(tmp_path: Path, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clawsvc", "upgrade", *args, "-c", str(config)],
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=UPGRADE_TIMEOUT)


def canary_processes(tmp_path: Path) -> list[int]:
    wanted = f"OPENCLAW_STATE_DIR={tmp_path / 'scratch'}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def links(prefix: Path) -> tuple[str | None, str | None]:
    return (gateway_links.linked_version(prefix), gateway_links.linked_version(prefix, gateway_links.PREVIOUS))


def assert_clean(tmp_path: Path, done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr + done.stdout
    assert list((tmp_path / "scratch").iterdir()) == [], "the canary's scratch dir was left behind"
    assert canary_processes(tmp_path) == []


# ---------------------------------------------------------------- refusals


def test_refuses_a_gateway_not_installed_by_gateway_install(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"gateway": {"command": list(double_command())}})
    done = upgrade(tmp_path, config, "1.0.2")
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "is not a gateway installed by `clawsvc gateway-install`" in done.stderr


def test_refuses_a_prefix_without_current(tmp_path: Path) -> None:
    prefix = farm(tmp_path)
    (prefix / gateway_links.CURRENT).unlink()
    done = upgrade(tmp_path, write_config(tmp_path, service_config(tmp_path, prefix)), "1.0.2")
    assert done.returncode == 1
    assert f"{prefix / 'current'} is missing" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_already_current_changes_nothing(tmp_path: Path) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.0", ""))
    gateway_links.point(prefix, gateway_links.PREVIOUS, "1.0.0")
    done = upgrade(tmp_path, write_config(tmp_path, service_config(tmp_path, prefix)), "1.0.1")
    assert done.returncode == 0, done.stderr
    assert "already on openclaw 1.0.1" in done.stderr
    assert links(prefix) == ("1.0.1", "1.0.0")


def test_rollback_needs_a_previous_version(tmp_path: Path) -> None:
    prefix = farm(tmp_path)
    done = upgrade(tmp_path, write_config(tmp_path, service_config(tmp_path, prefix)), "--rollback")
    assert done.returncode == 1
    assert "no previous version" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert links(prefix) == ("1.0.1", None)


def test_a_second_upgrade_of_the_same_prefix_is_refused_while_one_runs(tmp_path: Path) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.0", ""))
    gateway_links.point(prefix, gateway_links.PREVIOUS, "1.0.0")
    with open(prefix / upgrade_cmd.UPGRADE_LOCK, "w") as running:
        fcntl.flock(running, fcntl.LOCK_EX)  # the first upgrade, still canarying or switching
        done = upgrade(tmp_path, write_config(tmp_path, service_config(tmp_path, prefix)), "--rollback")
    assert done.returncode == 1, done.stderr
    assert "another `clawsvc upgrade` is working on" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert links(prefix) == ("1.0.1", "1.0.0")
    assert_clean(tmp_path, done)


def test_rollback_and_a_version_together_is_a_usage_error(tmp_path: Path) -> None:
    prefix = farm(tmp_path)
    done = upgrade(tmp_path, write_config(tmp_path, service_config(tmp_path, prefix)), "1.0.2", "--rollback")
    assert done.returncode == 2 and "either VERSION or --rollback" in done.stderr


# ---------------------------------------------------------------- the canary


@pytest.mark.parametrize("body, why", [(CANNOT_START, "exited with status 1 before answering"),
                                       (NEVER_LISTENS, "no hello-ok within 10s")])
def test_canary_refusal_touches_nothing(tmp_path: Path, services, body: str, why: str) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.3", body))
    svc = services(prefix)
    before = svc.status()
    done = upgrade(tmp_path, svc.config_path, "1.0.3")
    assert done.returncode == 1, done.stderr
    assert f"openclaw 1.0.3 failed its canary: it {why}" in done.stderr or why in done.stderr, done.stderr
    assert "nothing was switched, openclaw 1.0.1 keeps serving" in done.stderr
    if body == CANNOT_START:
        assert "  | boom: this version cannot start" in done.stderr
    after = svc.status()
    assert (after["pid"], after["gatewayVersion"], after["state"]) == (before["pid"], "1.0.1", "running")
    assert links(prefix) == ("1.0.1", None)
    assert svc.token not in done.stderr + done.stdout
    assert_clean(tmp_path, done)


def test_ctrl_c_during_the_canary_stops_it_and_switches_nothing(tmp_path: Path) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.3", NEVER_LISTENS))
    config = write_config(tmp_path, service_config(tmp_path, prefix))
    cli = subprocess.Popen([sys.executable, "-m", "clawsvc", "upgrade", "1.0.3", "-c", str(config)],
                           env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        poll(lambda: canary_processes(tmp_path), 30, "the canary gateway to start")
        cli.send_signal(signal.SIGINT)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 130, err
    assert "interrupted;" in err and "current -> openclaw-1.0.1" in err
    assert links(prefix) == ("1.0.1", None)
    assert_clean(tmp_path, subprocess.CompletedProcess(cli.args, cli.returncode, out, err))


# ---------------------------------------------------------------- switching


def test_upgrade_switches_verifies_prunes_and_rolls_back(tmp_path: Path, services) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.2", ""), ("1.0.0", ""))
    add_version(prefix, "0.9.0", node_dir="node-old")
    svc = services(prefix)
    old_pid = svc.status()["pid"]
    done = upgrade(tmp_path, svc.config_path, "1.0.2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "upgraded: openclaw 1.0.1 -> 1.0.2"
    status = svc.status()
    assert (status["state"], status["gatewayVersion"]) == ("running", "1.0.2") and status["pid"] != old_pid
    assert links(prefix) == ("1.0.2", "1.0.1")
    assert sorted(p.name for p in prefix.iterdir() if not p.name.startswith(".")) == [
        "current", "node-fake", "openclaw-1.0.1", "openclaw-1.0.2", "previous"]
    assert_clean(tmp_path, done)

    back = upgrade(tmp_path, svc.config_path, "--rollback")
    assert back.returncode == 0, back.stderr
    assert back.stdout.strip() == "rolled back: openclaw 1.0.2 -> 1.0.1"
    assert svc.status()["gatewayVersion"] == "1.0.1"
    assert links(prefix) == ("1.0.1", "1.0.2")


def test_a_version_failing_under_the_service_is_rolled_back(tmp_path: Path, services) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.4", ONLY_IN_CANARY))
    # FAST's 5 attempts 0.05-0.2 s apart: on a loaded machine clawsvc could give up on 1.0.4 (as configured)
    # before the upgrade's next look; this test is about the rollback, so clawsvc keeps trying meanwhile
    svc = services(prefix, {"reconnect": {"max_attempts": 0}})
    done = upgrade(tmp_path, svc.config_path, "1.0.4")
    assert done.returncode == 1, done.stderr
    assert "canary: openclaw 1.0.4 answered hello-ok" in done.stderr
    assert "error: rolled back to 1.0.1: the new gateway exited with status 1" in done.stderr
    told = recorded(tmp_path / "svc" / "rolled-back.jsonl")
    assert [(e["name"], e["payload"]["version"], e["payload"]["restored"]) for e in told] == [
        ("upgrade.rolled-back", "1.0.4", "1.0.1")]
    status = svc.status()
    assert (status["state"], status["gatewayVersion"]) == ("running", "1.0.1")
    assert links(prefix) == ("1.0.1", None)
    assert_clean(tmp_path, done)


def test_with_the_service_stopped_the_switch_waits_for_its_next_start(tmp_path: Path) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.2", ""))
    done = upgrade(tmp_path, write_config(tmp_path, service_config(tmp_path, prefix)), "1.0.2")
    assert done.returncode == 0, done.stderr
    assert "the service is not running; its next start runs openclaw 1.0.2" in done.stderr
    assert links(prefix) == ("1.0.2", "1.0.1")
    assert_clean(tmp_path, done)


# ---------------------------------------------------------------- links and pruning


def test_switch_moves_both_links(tmp_path: Path) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.2", ""))
    gateway_links.switch(prefix, "1.0.2", "1.0.1")
    assert links(prefix) == ("1.0.2", "1.0.1")
    gateway_links.switch(prefix, "1.0.1", None)
    assert links(prefix) == ("1.0.1", None)
    assert gateway_links.prefix_of(gateway_links.stable_command(prefix)) == prefix
    assert gateway_links.prefix_of(gateway_links.version_command(prefix, "1.0.1")) is None


def test_prune_keeps_current_previous_and_their_node(tmp_path: Path) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.2", ""), ("1.0.0", ""))
    add_version(prefix, "0.9.0", node_dir="node-old")
    gateway_links.point(prefix, gateway_links.PREVIOUS, "1.0.0")
    removed = prune(prefix, {"1.0.1"}, lambda _msg: None)
    assert sorted(removed) == ["node-old", "openclaw-0.9.0", "openclaw-1.0.2"]
    assert gateway_install.find_installation(prefix, "1.0.0") is not None
    assert gateway_install.find_installation(prefix, "1.0.1") is not None
    assert not list(prefix.glob(".*.stale-*"))


# ---------------------------------------------------------------- the canary runs on a copy of the state


def migrated(svc: ServiceProcess) -> Path:
    """Mark the service's state as migrated by a newer release (what REFUSES_NEWER_STATE refuses)."""
    marker = Path(svc.state_dir) / "schema-18"
    marker.write_text("18\n")
    return marker


def assert_refused_for_the_schema(done: subprocess.CompletedProcess[str], version: str) -> None:
    assert done.returncode == 1, done.stderr
    assert f"openclaw {version} failed its canary: it exited with status 78 before answering" in done.stderr
    assert "nothing was switched, openclaw 1.0.1 keeps serving" in done.stderr
    assert "  | Gateway refused startup because 1 OpenClaw database schema(s) are newer than this build" in done.stderr
    assert "hint: the service's state was migrated by a newer release than" in done.stderr
    assert "restored from a backup" in done.stderr


def test_a_downgrade_across_a_migration_is_refused_by_the_canary(tmp_path: Path, services) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.0", REFUSES_NEWER_STATE))
    svc = services(prefix)
    marker = migrated(svc)
    before = svc.status()
    done = upgrade(tmp_path, svc.config_path, "1.0.0")
    assert_refused_for_the_schema(done, "1.0.0")
    after = svc.status()
    assert (after["pid"], after["gatewayVersion"], after["state"]) == (before["pid"], "1.0.1", "running")
    assert links(prefix) == ("1.0.1", None)
    assert marker.read_text() == "18\n"
    assert_clean(tmp_path, done)


def test_rollback_runs_the_canary_and_is_refused_the_same_way(tmp_path: Path, services) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.0", REFUSES_NEWER_STATE))
    gateway_links.point(prefix, gateway_links.PREVIOUS, "1.0.0")
    svc = services(prefix)
    migrated(svc)
    before = svc.status()
    done = upgrade(tmp_path, svc.config_path, "--rollback")
    assert "canary: starting openclaw 1.0.0" in done.stderr
    assert_refused_for_the_schema(done, "1.0.0")
    after = svc.status()
    assert (after["pid"], after["gatewayVersion"], after["state"]) == (before["pid"], "1.0.1", "running")
    assert links(prefix) == ("1.0.1", "1.0.0")
    assert_clean(tmp_path, done)


def test_the_canary_sees_the_copied_state_quietly_and_without_keys(tmp_path: Path) -> None:
    prefix = farm(tmp_path, "1.0.1", ("1.0.3", SHOWS_ITS_STATE))
    config = service_config(tmp_path, prefix)
    config["gateway"]["env"]["ANTHROPIC_API_KEY"] = "sk-ant-from-the-config-0123456789"
    state = Path(config["gateway"]["state_dir"])
    (state / "data").mkdir(parents=True)
    (state / "data" / "notes.txt").write_text("copied")
    (state / "gateway.log").write_text("the service's log\n")
    path = write_config(tmp_path, config)
    done = subprocess.run([sys.executable, "-m", "clawsvc", "upgrade", "1.0.3", "-c", str(path)],
                          env=dict(cli_env(tmp_path), OPENAI_API_KEY="sk-from-the-shell-0123456789"),
                          capture_output=True, text=True, timeout=UPGRADE_TIMEOUT)
    assert done.returncode == 1, done.stderr
    assert "canary: copied the service's state" in done.stderr and "(1 files, 0 database(s)" in done.stderr
    assert "  | state: copied skip=111 key=[nonenone] log=" in done.stderr
    assert "sk-" not in done.stderr + done.stdout
    assert sorted(p.name for p in state.iterdir()) == ["data", "gateway.log"]
    assert links(prefix) == ("1.0.1", None)
    assert_clean(tmp_path, done)


def test_the_canary_runs_on_its_copy_even_when_gateway_env_names_the_live_state(tmp_path: Path) -> None:
    """gateway.env wins over the paths clawsvc sets: for the canary, they would name the live state."""
    prefix = farm(tmp_path, "1.0.1", ("1.0.3", SHOWS_ITS_PATHS))
    config = service_config(tmp_path, prefix)
    state = Path(config["gateway"]["state_dir"]).absolute()
    config["gateway"]["env"].update(OPENCLAW_STATE_DIR=str(state), OPENCLAW_CONFIG_PATH=str(state / "openclaw.json"))
    state.mkdir(parents=True)
    done = upgrade(tmp_path, write_config(tmp_path, config), "1.0.3")
    assert done.returncode == 1, done.stderr
    line = next(line for line in done.stderr.splitlines() if line.startswith("  | paths: "))
    copy_state, copy_config = line.removeprefix("  | paths: ").split()
    assert Path(copy_state).parent.name.startswith("clawsvc-canary-") and Path(copy_state).name == "state"
    assert copy_config == f"{copy_state}/openclaw.json"
    assert_clean(tmp_path, done)
