"""`clawsvc run` with the gateway double crashing in a loop: ten crashes in a minute give the alert hook one run and
a held-back count, and `clawsvc metrics` (the CLI, over the control socket) counts every crash."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from double import double_command, free_port
from hookkit import command_hook, recorded
from service_proc import ServiceProcess, base_config, merge, poll

FAST = {
    "gateway": {"stop_timeout": 1.0, "start_timeout": 20.0,
                "env": {"DOUBLE_EXIT_AFTER": "0.2", "DOUBLE_TICK_MS": "300"}},
    "connection": {"handshake_timeout": 0.5, "request_timeout": 2.0},
    "health": {"interval": 0.5, "timeout": 0.5, "failures": 2},
    "reconnect": {"base_delay": 0.05, "max_delay": 0.2, "max_attempts": 50, "stable_after": 60.0},
}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    config = merge(base_config(tmp_path, double_command(), free_port()), FAST)
    config["alerts"] = [{"on": ["gateway.exited"], "command": command_hook(tmp_path / "hook.jsonl"),
                         "min_interval": "60s"}]
    svc = ServiceProcess.start(tmp_path, config)
    yield svc
    svc.close()


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert found, f"{name} not in:\n{text}"
    return float(found.group(1))


def crashes_seen(svc: ServiceProcess, least: int) -> str | None:
    """`clawsvc metrics` once it counts `least` crashes (None before, or while the service is not up yet)."""
    done = subprocess.run([sys.executable, "-m", "clawsvc", "metrics", "-c", str(svc.config_path)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        assert done.returncode == 3, done.stderr
        return None
    return done.stdout if metric(done.stdout, 'clawsvc_gateway_restarts_total{reason="crash"}') >= least else None


def test_ten_crashes_in_a_minute_give_one_hook_run_and_a_held_back_count(service: ServiceProcess,
                                                                        tmp_path: Path) -> None:
    text = poll(lambda: crashes_seen(service, 10), 50, "ten crashes")
    exits = len(re.findall(r"supervisor: gateway pid \d+ exited with status 1", service.log()))
    assert exits >= 10
    service.terminate()
    runs = recorded(tmp_path / "hook.jsonl")
    assert len(runs) == 1 and runs[0]["name"] == "gateway.exited" and runs[0]["held_back"] == 0
    assert runs[0]["payload"]["returncode"] == 1
    assert metric(text, 'clawsvc_alerts_sent_total{hook="1"}') == 1
    assert metric(text, 'clawsvc_alerts_held_back_total{hook="1"}') >= 9
    assert metric(text, 'clawsvc_alerts_failed_total{hook="1"}') == 0
    assert metric(text, "clawsvc_gateway_up") in (0, 1)
