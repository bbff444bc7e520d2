"""Signals at bad moments: SIGHUP while a restart backoff runs, SIGHUP with broken YAML, SIGKILL of clawsvc."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

from faultkit import (
    Callers,
    Services,
    finish,
    gone,
    health_ok,
    last_status,
    ready,
    requests_seen,
    running_other_than,
    spawned,
    stops_clean,
)
from service_proc import ServiceProcess, merge, poll

LONG_BACKOFF = {"reconnect": {"base_delay": 30.0, "max_delay": 30.0, "max_attempts": 0}}


def kill_until_backing_off(svc: ServiceProcess, pid: int, at_least: float = 5.0) -> float:
    """SIGKILL the gateway until clawsvc schedules a restart at least `at_least` seconds away.

    The first crash restarts at once and later delays are jittered in [0, base_delay]; a short draw just
    means another round."""
    for _ in range(8):
        os.kill(pid, signal.SIGKILL)
        delay = float(svc.wait_log(rf"gateway pid {pid} killed by SIGKILL; restarting in ([\d.]+)s", 10).group(1))
        if delay >= at_least:
            return delay
        pid = running_other_than(svc, pid)["pid"]
    raise AssertionError("eight restart delays in a row were shorter than expected: is the backoff jittered?")


def environ(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


def test_sighup_during_a_restart_backoff_applies_the_reload_and_recovers(services: Services) -> None:
    svc = services.start(extra=LONG_BACKOFF)
    first = ready(svc)["pid"]
    kill_until_backing_off(svc, first)
    waiting = svc.status()
    assert waiting["state"] == "reconnecting" and waiting["pid"] is None, waiting
    assert last_status(svc).startswith("reconnecting port=")
    before = set(spawned(svc))

    svc.rewrite_config(merge(svc.config, {"gateway": {"env": {"FAULT_RELOAD": "2"}}}))
    mark = svc.peer.mark()
    svc.send_signal(signal.SIGHUP)
    svc.peer.wait_for(r"^RELOADING=1\nMONOTONIC_USEC=\d+", 10, since=mark)
    svc.peer.wait_for(r"^READY=1", 10, since=mark)
    status = running_other_than(svc, first, timeout=15)
    assert status["pid"] not in before
    assert b"FAULT_RELOAD=2" in environ(status["pid"]), "the restarted gateway must run with the reloaded config"
    assert re.search(r"reloaded .*gateway\.env changed, restarting the gateway", svc.log())
    assert "gateway restart requested (config reload changed gateway.env)" in svc.log()
    assert last_status(svc).startswith(f"running pid={status['pid']}")
    health_ok(svc)
    stops_clean(svc)


def test_sighup_with_broken_yaml_keeps_running_and_says_so(services: Services, callers: Callers) -> None:
    svc = services.start(events=True)
    pid = ready(svc)["pid"]
    good = dict(svc.config)
    slow = callers.start(svc, "rpc", "double.sleep", '{"ms": 1000}')
    poll(lambda: requests_seen(svc, "double.sleep"), 10, "the slow call to reach the double")

    svc.rewrite_config("gateway:\n  port: [1, 2\nlogging: {level: debug}\n")
    mark = svc.peer.mark()
    svc.send_signal(signal.SIGHUP)
    svc.peer.wait_for("^RELOADING=1", 10, since=mark)
    failed = svc.peer.wait_for(r"^READY=1\nSTATUS=running .*\(reload failed: ", 10, since=mark)
    assert str(svc.config_path) in failed.text
    assert re.search(rf"ERROR .*reload failed, still running on the previous config: {re.escape(str(svc.config_path))}"
                     r":\d+", svc.log())
    code, out, err = finish(slow)
    assert code == 0 and json.loads(out) == {"sleptMs": 1000}, err
    status = svc.status()
    assert status["state"] == "running" and status["pid"] == pid and spawned(svc) == [pid]
    assert svc.request({"cmd": "rpc", "method": "health", "params": None, "timeout": 5})["ok"] is True

    svc.rewrite_config(good)
    mark = svc.peer.mark()
    svc.send_signal(signal.SIGHUP)
    fixed = svc.peer.wait_for(r"^READY=1", 10, since=mark)
    assert "reload failed" not in fixed.text and svc.status()["pid"] == pid
    stops_clean(svc)


def kill_clawsvc_and_start_again(services: Services, svc: ServiceProcess, root: Path) -> ServiceProcess:
    """SIGKILL clawsvc; its gateway must die with it (parent-death signal); a new clawsvc on the same config
    (port, state dir, control socket) must then start its own gateway cleanly."""
    pid = svc.status()["pid"]
    svc.popen.kill()
    svc.popen.wait(10)
    gone([pid])
    again = ServiceProcess.start(root, svc.config)
    services.started.append(again)
    status = ready(again)
    assert status["owned"] is True and status["pid"] != pid
    assert "removing stale control socket" in again.log()
    health_ok(again)
    return again


def test_sigkill_of_clawsvc_leaves_no_gateway_behind(services: Services, tmp_path: Path) -> None:
    svc = services.start()
    ready(svc)
    old = svc.leftovers()
    assert len(old) == 1, old
    again = kill_clawsvc_and_start_again(services, svc, tmp_path / "again")
    assert not set(old) & set(again.leftovers())
    stops_clean(again)


def test_after_sigkill_of_clawsvc_the_next_start_leaves_no_gateway_child_behind(services: Services,
                                                                                 tmp_path: Path) -> None:
    svc = services.start(double_env={"DOUBLE_SPAWN_CHILD": "1"})
    ready(svc)
    old = svc.leftovers()
    assert len(old) == 2, old
    again = kill_clawsvc_and_start_again(services, svc, tmp_path / "again")
    poll(lambda: not set(old) & set(again.leftovers()), 5, f"the old gateway's child ({old}) to be gone")
    stops_clean(again)
