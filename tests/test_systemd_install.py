"""`clawsvc install --system` end to end in a booted systemd 252 (tests/systemd_guest.py), with the real gateway.

The guest starts like a machine where only `clawsvc gateway-install` was run: /opt/clawsvc/gateway is a writable
"farm" (a tmp dir with symlinks to the test cache's node and openclaw, so nothing is copied into the guest's 2 GB
tmpfs), nothing in /etc/clawsvc, no clawsvc user. One guest for the module; the tests build on each other in
file order (install, rerun, restart, instances, the unreachable interpreter, as it rewrites the main unit, and
last a stop during a turn, which leaves the unit stopped).
Run alone with:  pytest -m systemd tests/test_systemd_install.py -s   (-s shows the measured timings)
"""

from __future__ import annotations

import json
import os
import re
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import slow_model_process
from helpers.slow_model_process import ModelProcess
from service_proc import merge
from slowmodel_kit import model_config, turn_params
from systemd_guest import GUEST_ENV, GUEST_OPT, GUEST_PYTHON, REPO, Guest, base_python, booted_systemd, guest_pythonpath
from waiting import poll

from clawsvc.commands.runtime.provision import Installation
from clawsvc.gateway.process import UNIT_STOP_TIMEOUT

pytestmark = [pytest.mark.systemd, pytest.mark.realgateway, pytest.mark.timeout(1800)]

PREFIX = "/opt/clawsvc/gateway"
CONFIG = "/etc/clawsvc/clawsvc.yaml"
INSTALL_TIMEOUT = 600.0  # to READY: the gateway needs ~7 s idle, minutes on a loaded 2-core machine
WRITTEN = ("/etc/systemd/system/clawsvc.service", "/etc/systemd/system/clawsvc@.service",
           "/etc/sysusers.d/clawsvc.conf", CONFIG)
GUEST_VENV = Path("/root/clawsvc-venv")  # made in the guest only (its overlay): nothing is written on the host
EXPOSURE_MAX = 2.0
STATE_DIR = "/var/lib/clawsvc/openclaw"  # the installed config's gateway.state_dir
TURN_TIMEOUT = 180.0  # chat.send → the model call: 8-12 s, more for a gateway's first turn on a loaded machine
MODEL_CALL = 25.0


def farm(tmp: Path, gateway: Installation) -> Path:
    """A gateway-install prefix whose version dirs are links into the shared cache (which is never switched)."""
    prefix = tmp / "gateway"
    prefix.mkdir()
    prefix.chmod(0o755)  # it becomes /opt/clawsvc/gateway, which the service user must traverse
    cache = gateway.version_path.parent
    for name in (gateway.version_path.name, gateway.node.relative_to(cache).parts[0]):
        (prefix / name).symlink_to(cache / name)
    return prefix


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, gateway_install: Installation) -> Iterator[Guest]:
    tmp = tmp_path_factory.mktemp("install-guest")
    with booted_systemd(tmp, writable={farm(tmp, gateway_install): Path(PREFIX)}) as booted:
        yield booted
        for unit in ("clawsvc.service", "clawsvc@alpha.service", "clawsvc@beta.service"):
            print(f"--- {unit}\n{booted.journal(unit)[-3000:]}")  # shown by pytest when a test failed


def install(guest: Guest, *args: str, exe: str = "clawsvc") -> tuple[float, str, str]:
    started = time.monotonic()
    result = guest.run(exe, "install", "--system", *args, timeout=INSTALL_TIMEOUT)
    took = time.monotonic() - started
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return took, result.stdout, result.stderr


def mtimes(guest: Guest, paths: tuple[str, ...]) -> dict[str, int]:
    return {p: guest.path(p).stat().st_mtime_ns for p in paths}


def rpc_health(guest: Guest, *args: str) -> dict[str, object]:
    result = guest.run("clawsvc", "rpc", "health", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert isinstance(payload, dict)
    return payload


def gateway_pid(guest: Guest, *args: str) -> int:
    result = guest.run("clawsvc", "status", "--json", *args, timeout=60)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "running"
    return int(status["pid"])


def exposure(guest: Guest, unit: str) -> float:
    result = guest.run("systemd-analyze", "security", "--no-pager", unit, timeout=120)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"{result.stdout[-500:]}\n{result.stderr}"
    return float(match.group(1))


@pytest.fixture(scope="module")
def first_install(guest: Guest) -> str:
    """gateway-install (finds the complete install, creates `current`), then `clawsvc install --system` alone."""
    provisioned = guest.run("clawsvc", "gateway-install", timeout=300)
    assert provisioned.returncode == 0, provisioned.stderr
    assert "already installed" in provisioned.stderr and "current ->" in provisioned.stderr
    assert not guest.path(CONFIG).exists() and guest.run("id", "clawsvc").returncode != 0
    took, out, _ = install(guest)
    print(f"\nTIMING install --system to READY (first run, gateway already provisioned): {took:.1f}s")
    return out


def test_install_alone_ends_enabled_active_and_serving(guest, first_install):
    props = guest.show("clawsvc.service", "ActiveState", "SubState", "UnitFileState", "StatusText")
    assert props == {"ActiveState": "active", "SubState": "running", "UnitFileState": "enabled",
                     "StatusText": props["StatusText"]}
    assert props["StatusText"].startswith("running"), props["StatusText"]
    assert "enabled and started clawsvc.service: READY after" in first_install
    assert "clawsvc - OpenClaw gateway service: running" in first_install  # the `clawsvc status` block
    assert f"Config: {CONFIG}" in first_install
    rpc_health(guest)
    config = guest.path(CONFIG).read_text()
    assert f'command: ["{PREFIX}/current/node", "{PREFIX}/current/node_modules/openclaw/openclaw.mjs"]' in config
    assert "# The argv that starts OpenClaw" in config, "the example's comments are kept"
    assert guest.run("id", "-u", "clawsvc").returncode == 0
    assert not guest.path("/etc/systemd/system/clawsvc.service.d").exists(), "/usr/local/bin/clawsvc needs no drop-in"


def test_doctor_is_clean_after_a_default_install(guest, first_install):
    """As root, doctor judges as check-config and run do: the token, state dir and compile cache the service
    user owns are the service's, not a problem to fix with root-owned dirs."""
    result = guest.run("clawsvc", "doctor", timeout=300)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert [line for line in result.stdout.splitlines() if line.startswith("FAIL")] == []
    assert "ok    preflight: the checks of check-config and run pass" in result.stdout
    assert re.search(rf"ok    gateway\.command: node \S+ \({PREFIX}/current/node\) runs openclaw", result.stdout)
    assert re.search(r"ok    token: generated /var/lib/clawsvc/openclaw/gateway-token", result.stdout), result.stdout


def test_rerun_changes_nothing_and_restarts_nothing(guest, first_install):
    before = mtimes(guest, WRITTEN)
    main_pid = guest.show("clawsvc.service", "MainPID")["MainPID"]
    gateway = gateway_pid(guest)
    took, out, _ = install(guest)
    print(f"\nTIMING install --system rerun (nothing to change): {took:.1f}s")
    assert "nothing to change: clawsvc.service is enabled and running" in out
    assert "reloaded systemd" not in out and "wrote" not in out and "updated" not in out
    assert mtimes(guest, WRITTEN) == before
    assert not guest.path(CONFIG + ".new").exists()
    assert guest.show("clawsvc.service", "MainPID")["MainPID"] == main_pid
    assert gateway_pid(guest) == gateway


def test_installed_unit_exposure_stays_low(guest, first_install):
    assert exposure(guest, "clawsvc.service") <= EXPOSURE_MAX


def test_compile_cache_persists_across_a_restart(guest, first_install):
    guest.systemctl("restart", "clawsvc.service", check=True, timeout=INSTALL_TIMEOUT)
    cache = guest.path("/var/cache/clawsvc")
    assert cache.is_dir()
    found = [p for p in cache.rglob("*") if p.is_file()]
    assert found, "the gateway's compile cache under /var/cache/clawsvc is empty after a start"
    rpc_health(guest)


def test_two_instances_serve_side_by_side(guest, first_install):
    guest.systemctl("stop", "clawsvc.service", check=True, timeout=120)  # three gateways would be ~3 GB
    try:
        for name in ("alpha", "beta"):
            took, out, _ = install(guest, "--instance", name)
            print(f"\nTIMING install --system --instance {name} to READY: {took:.1f}s")
            assert f"enabled and started clawsvc@{name}.service: READY after" in out
        ports = set()
        for name in ("alpha", "beta"):
            assert guest.show(f"clawsvc@{name}.service", "ActiveState")["ActiveState"] == "active"
            rpc_health(guest, "--instance", name)
            assert guest.path(f"/var/lib/clawsvc/{name}/openclaw").is_dir()
            text = guest.path(f"/etc/clawsvc/{name}.yaml").read_text()
            assert f'state_dir: "/var/lib/clawsvc/{name}/openclaw"' in text
            assert f'socket: "/run/clawsvc/{name}/control.sock"' in text
            ports.add(re.search(r"^  port: (\d+)$", text, re.MULTILINE).group(1))
        assert ports == {"18790", "18791"}
        assert gateway_pid(guest, "--instance", "alpha") != gateway_pid(guest, "--instance", "beta")
        before = mtimes(guest, ("/etc/clawsvc/alpha.yaml",))
        _, out, _ = install(guest, "--instance", "alpha")
        assert "nothing to change: clawsvc@alpha.service" in out
        assert mtimes(guest, ("/etc/clawsvc/alpha.yaml",)) == before
    finally:
        for name in ("alpha", "beta"):
            guest.systemctl("stop", f"clawsvc@{name}.service", timeout=120)
        guest.systemctl("start", "clawsvc.service", timeout=INSTALL_TIMEOUT)


def test_instance_is_refused_for_user_units(guest):
    result = guest.run("clawsvc", "install", "--user", "--instance", "gamma", timeout=60)
    assert result.returncode == 2 and "--instance works with --system only" in result.stderr
    assert not guest.path("/etc/clawsvc/gamma.yaml").exists()


def venv_below_root(guest: Guest) -> Path:
    """What an admin gets from `python3 -m venv /root/clawsvc-venv` and a pip install there, made in the guest on
    this interpreter (clawsvc and its packages from the guest's /opt/clawsvc, so wherever the checkout lives);
    its console script, as pip writes it."""
    guest.run("sh", "-c", f"umask 022 && exec {base_python()} -m venv --without-pip {GUEST_VENV}", check=True)
    purelib = sysconfig.get_path("purelib", "venv", vars={"base": str(GUEST_VENV), "platbase": str(GUEST_VENV)})
    guest.write(Path(purelib) / "clawsvc.pth", "".join(f"{path}\n" for path in guest_pythonpath()))
    script = GUEST_VENV / "bin" / "clawsvc"
    guest.write(script, f"#!{GUEST_VENV}/bin/python\nfrom clawsvc.cli import main\nraise SystemExit(main())\n", 0o755)
    return script


def test_a_unit_that_fails_for_good_runs_the_alert_hooks_through_on_failure(guest, first_install):
    """clawsvc exits 78 (its gateway: "Missing config") -> systemd gives up -> OnFailure=clawsvc-alert@%n.service ->
    `clawsvc alert` as the clawsvc user -> the hook (logger, into the journal) gets service.failed."""
    assert guest.path("/etc/systemd/system/clawsvc-alert@.service").is_file()
    guest.write("/etc/clawsvc/fail-gateway.sh", '#!/bin/sh\necho "Missing config. Run openclaw setup" >&2\nexit 78\n',
                mode=0o755)
    config = {"gateway": {"command": ["/etc/clawsvc/fail-gateway.sh"], "port": 18799,
                          "state_dir": "/var/lib/clawsvc/failing/openclaw"},
              "control": {"socket": "/run/clawsvc/failing/control.sock"},
              "alerts": [{"on": ["service.failed"], "command": ["logger", "-t", "clawsvc-hook"]}]}
    guest.write("/etc/clawsvc/failing.yaml", json.dumps(config), mode=0o640)
    assert guest.run("chgrp", "clawsvc", "/etc/clawsvc/failing.yaml").returncode == 0
    try:
        guest.systemctl("start", "clawsvc@failing.service", timeout=120)
        props = guest.show("clawsvc@failing.service", "ActiveState", "ExecMainStatus")
        assert (props["ActiveState"], props["ExecMainStatus"]) == ("failed", "78")

        def told() -> str | None:
            out = guest.run("journalctl", "--no-pager", "-t", "clawsvc-hook", "-o", "cat", timeout=60).stdout
            return out if "service.failed" in out else None

        line = json.loads(poll(told, 60, "the hook's line in the journal").strip().splitlines()[-1])
        assert line["name"] == "service.failed" and line["payload"]["unit"] == "clawsvc@failing.service"
        assert line["payload"]["result"] == "exit-code" and line["payload"]["exit_status"] == "78"
        assert guest.show("clawsvc-alert@clawsvc@failing.service.service", "Result")["Result"] == "success"
    finally:
        guest.systemctl("reset-failed", "clawsvc@failing.service", timeout=60)
        for path in ("/etc/clawsvc/failing.yaml", "/etc/clawsvc/fail-gateway.sh"):
            guest.path(path).unlink(missing_ok=True)


def test_clawsvc_under_root_gets_a_drop_in_and_ends_ready(guest, first_install):
    """A venv below /root, which ProtectHome=yes hides (a 203/EXEC before): the drop-in binds it, and its python
    too when that is below /root as well (pyenv's)."""
    script = venv_below_root(guest)
    python_home = Path(os.path.realpath(sys.base_prefix))
    expected = {GUEST_VENV, *([python_home] if Path("/root") in python_home.parents else [])}
    took, out, _ = install(guest, exe=str(script))
    print(f"\nTIMING install --system from a venv below /root (drop-in, restart to READY): {took:.1f}s")
    dropin = guest.path("/etc/systemd/system/clawsvc.service.d/10-clawsvc-reach.conf").read_text()
    assert "ProtectHome=tmpfs" in dropin
    assert {Path(line.split("=", 1)[1]) for line in dropin.splitlines()
            if line.startswith("BindReadOnlyPaths=")} == expected, dropin
    props = guest.show("clawsvc.service", "ActiveState", "ExecStart")
    assert props["ActiveState"] == "active" and str(script) in props["ExecStart"]
    assert "restarted (its unit changed) clawsvc.service" in out
    rpc_health(guest)
    assert exposure(guest, "clawsvc.service") <= EXPOSURE_MAX


def serve_the_slow_model(guest: Guest, base_url: str) -> None:
    """Make the guest's gateway's agent answer with the slow model at base_url (inside the guest): its own config,
    openclaw.json in its state dir (the service user's, 0600; merged into the gateway's if it wrote one), and a
    restart of the gateway to read it."""
    config = guest.path(f"{STATE_DIR}/openclaw.json")
    written = json.loads(config.read_text()) if config.exists() else {}
    config.write_text(json.dumps(merge(written, {"gateway": {"mode": "local"}, **model_config(base_url)})))
    owner = guest.path(STATE_DIR).stat()
    os.chown(config, owner.st_uid, owner.st_gid)
    config.chmod(0o600)
    before = json.loads(guest.run("clawsvc", "status", "--json", check=True, timeout=60).stdout)
    guest.run("clawsvc", "restart-gateway", check=True, timeout=60)

    def restarted() -> bool:  # `status` exits 3 while the service is not running
        status = json.loads(guest.run("clawsvc", "status", "--json", timeout=60).stdout)
        return status["state"] == "running" and status["restarts"] > before["restarts"]
    guest.wait_for("the gateway back after its restart", restarted, timeout=INSTALL_TIMEOUT, interval=1.0)


def test_systemctl_stop_during_a_turn_lets_it_finish(guest, first_install):
    """Issue 19: the shipped unit and clawsvc's defaults give a turn in flight its time: no TimeoutStopSec kill
    (systemd's "State 'stop-sigterm' timed out"), no SIGKILL, one model call and it finished."""
    script = str(GUEST_OPT / "src" / Path(slow_model_process.__file__).relative_to(REPO))
    with ModelProcess(guest.enter, GUEST_PYTHON, script, "finished under systemd", MODEL_CALL,
                      env=GUEST_ENV) as model:
        serve_the_slow_model(guest, model.base_url)
        gateway = gateway_pid(guest)
        sent = guest.run("clawsvc", "rpc", "chat.send", json.dumps(turn_params("hello from the guest", "stop")),
                         timeout=120)
        assert sent.returncode == 0 and json.loads(sent.stdout)["status"] == "started", sent.stderr
        (call,) = model.arrived(1, TURN_TIMEOUT)
        threading.Event().wait(1.0)  # the moment: 1 s into the model call
        earlier = len(guest.journal("clawsvc.service"))
        started = time.monotonic()
        stopped = guest.systemctl("stop", "clawsvc.service", timeout=UNIT_STOP_TIMEOUT + 60)
        took = time.monotonic() - started
        ended = model.ended(call["call"], 10)
        calls = model.calls("arrived")
    print(f"\nTIMING systemctl stop during a {MODEL_CALL:g}s model call (1 s in): {took:.1f}s")
    assert stopped.returncode == 0, stopped.stderr
    assert ended["outcome"] == "finished" and len(calls) == 1, (ended, calls)
    assert guest.show("clawsvc.service", "ActiveState", "Result", "ExecMainStatus") == \
        {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    journal = guest.journal("clawsvc.service")[earlier:]
    assert not re.search(r"State 'stop-sigterm' timed out|sending SIGKILL|with signal SIGKILL", journal), journal
    assert re.search(r"gateway drain: waiting for .*embeddedRuns=1", journal), "the stop met the turn in flight"
    assert f"gateway pid {gateway} exited with status 0" in journal
