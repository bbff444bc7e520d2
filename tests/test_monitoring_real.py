"""Monitoring against the real gateway and a real Prometheus: `clawsvc run` with metrics.listen, metrics.textfile and
two alert hooks (a command and a webhook on a local HTTP server of the tests), scraped every second by Prometheus.
One clawsvc and one Prometheus are shared by the ordered tests below (a real gateway start costs 7-90 s here):
metrics as promtool wants them → the real gateway's memory and heap limit → SIGKILL seen by PromQL → each hook told
once → a memory threshold below the gateway's size: one draining restart per cooldown, no loop."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hookkit import Receiver, command_hook, recorded
from prom import Prometheus, prometheus_binary
from realgw import free_port, gateway_env
from service_proc import ServiceProcess, base_config, merge, poll

from clawsvc.commands.runtime.provision import Installation
from clawsvc.gateway import memory

pytestmark = pytest.mark.realgateway

START = 180.0  # seconds: 7 s idle, 90 s seen with other gateways starting on the same 2 cores
MIB = 1 << 20


@dataclass
class Shared:
    svc: ServiceProcess
    prom: Prometheus
    receiver: Receiver
    root: Path
    metrics_port: int


@pytest.fixture(scope="module")
def shared(gateway_install: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("monitored")
    port, metrics_port = free_port(), free_port()
    state = root / "state"
    env = gateway_env(state, port)
    state.chmod(0o700)
    with Receiver() as receiver:
        config = merge(base_config(root, gateway_install.command, port), {
            "gateway": {"env": env, "stop_timeout": 20.0, "start_timeout": START},
            "health": {"interval": 1.0, "timeout": 1.0, "failures": 3},
            "reconnect": {"base_delay": 0.2, "max_delay": 2.0, "max_attempts": 5},
            "metrics": {"listen": f"127.0.0.1:{metrics_port}", "textfile": str(root / "textfile" / "clawsvc.prom")},
            "alerts": [{"on": ["gateway.exited"], "command": command_hook(root / "hook.jsonl")},
                       {"on": ["gateway.exited"], "webhook": f"{receiver.url}/hooks/clawsvc"}],
        })
        (root / "textfile").mkdir()
        svc = ServiceProcess.start(root, config)
        prom = Prometheus(root / "prometheus", [f"127.0.0.1:{metrics_port}"])
        try:
            svc.wait_state(lambda s: s["state"] == "running", START, "the real gateway running")
            prom.start()
            yield Shared(svc, prom, receiver, root, metrics_port)
        finally:
            prom.stop()
            svc.close()


def scrape(svc: ServiceProcess) -> str:
    done = subprocess.run([sys.executable, "-m", "clawsvc", "metrics", "-c", str(svc.config_path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def sample(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def sampled(text: str) -> str | None:
    return text if sample(text, "clawsvc_gateway_resident_memory_bytes") is not None else None


def test_promtool_accepts_the_metrics_of_the_real_gateway(shared: Shared) -> None:
    text = scrape(shared.svc)
    checked = subprocess.run([prometheus_binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=30)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
    version = shared.svc.status()["gatewayVersion"]
    assert sample(text, f'clawsvc_build_info{{version="0.1.0",gateway_version="{version}"}}') == 1
    assert sample(text, "clawsvc_gateway_up") == 1


def test_the_resident_memory_metric_is_the_real_gateways(shared: Shared) -> None:
    text = poll(lambda: sampled(scrape(shared.svc)), 30, "a memory sample after a health check")
    shown = sample(text, "clawsvc_gateway_resident_memory_bytes")
    assert shown is not None
    measured = memory.tree_rss(shared.svc.status()["pid"])
    assert measured is not None
    print(f"\ngateway tree RSS: metric {shown / MIB:.0f} MiB, /proc now {measured / MIB:.0f} MiB")
    assert 200 * MIB < shown < 8192 * MIB, "hundreds of MB: the gateway's three processes"
    assert abs(shown - measured) < 0.35 * measured


def test_the_gateway_runs_with_openclaws_heap_limit(shared: Shared, gateway_install: Installation) -> None:
    """The gateway renames its process (process.title), so its argv is read from clawsvc's log of the spawn; the
    same node then shows that the flag in that place sets V8's heap limit."""
    pid = shared.svc.status()["pid"]
    expected = memory.heap_limit_mib(memory.available_memory()[0])
    spawned = shared.svc.wait_log(rf"started gateway pid {pid}: (\S+) (\S+) (\S+)", 5)
    node, flag, entry = spawned.groups()
    assert (node, flag, entry) == (gateway_install.command[0], f"--max-old-space-size={expected}",
                                   gateway_install.command[1])
    probe = "console.log(require('v8').getHeapStatistics().heap_size_limit)"
    limit = int(subprocess.run([node, flag, "-e", probe], capture_output=True, text=True, timeout=60).stdout)
    print(f"\nV8 heap limit: {flag} -> heap_size_limit {limit / MIB:.0f} MiB")
    assert expected * MIB <= limit <= (expected + 256) * MIB


def test_prometheus_sees_a_sigkill_as_a_crash_and_the_gateway_up_again(shared: Shared) -> None:
    prom, svc = shared.prom, shared.svc
    crashes = 'clawsvc_gateway_restarts_total{reason="crash"}'
    before = poll(lambda: prom.value(crashes) is not None and prom.value("clawsvc_gateway_up") == 1, 30,
                  "Prometheus scraping clawsvc")
    assert before and prom.value(crashes) == 0
    pid = svc.status()["pid"]
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    poll(lambda: prom.value(crashes) == 1, 60, f"PromQL seeing the crash ({prom.log_tail()})")
    poll(lambda: prom.value("clawsvc_gateway_up") == 0 or svc.status()["pid"] != pid, 60, "the restart begun")
    svc.wait_state(lambda s: s["state"] == "running" and s["pid"] not in (None, pid), START, "a new gateway")
    poll(lambda: prom.value("clawsvc_gateway_up") == 1, 30, "PromQL seeing the gateway up again")
    print(f"\nSIGKILL -> clawsvc_gateway_up back at 1 in Prometheus: {time.monotonic() - killed_at:.1f}s")
    assert prom.value(f"increase({crashes}[5m])") is not None
    textfile = (shared.root / "textfile" / "clawsvc.prom").read_text()
    assert re.search(r'^clawsvc_gateway_restarts_total\{reason="crash"\} 1$', textfile, re.M)


def test_each_hook_is_told_of_the_exit_once(shared: Shared) -> None:
    record = shared.root / "hook.jsonl"
    poll(lambda: recorded(record) and shared.receiver.events(), 30, "both hooks run")
    for got in (recorded(record), shared.receiver.events("/hooks/clawsvc")):
        assert [(e["name"], e["payload"]["signal"], e["held_back"]) for e in got] == [("gateway.exited", 9, 0)]
        assert got[0]["text"].endswith(f"gateway.exited: pid {got[0]['payload']['pid']} killed by SIGKILL")


def test_a_memory_threshold_below_the_gateways_size_drains_it_once_per_cooldown(shared: Shared) -> None:
    svc = shared.svc
    pid = svc.status()["pid"]
    since = len(svc.log())
    svc.rewrite_config(merge(svc.config, {"gateway": {"memory": {"restart_above": "100M", "cooldown": "1m"}}}))
    svc.send_signal(signal.SIGHUP)
    svc.wait_log(rf"gateway pid {pid} uses .* above gateway\.memory\.restart_above", 30, since)
    svc.wait_log(rf"gateway pid {pid} exited with status 0", 60, since)  # drained (SIGTERM), not killed
    new = svc.wait_state(lambda s: s["state"] == "running" and s["pid"] not in (None, pid), START, "a new gateway")
    assert sample(scrape(svc), 'clawsvc_gateway_restarts_total{reason="memory"}') == 1
    poll(lambda: svc.status().get("memory"), 30, "the new gateway sampled")  # it is above the threshold too
    stop = threading.Event()
    watched = time.monotonic()
    while time.monotonic() - watched < 15.0:  # 15 health checks of a gateway still above the threshold
        status = svc.status()
        assert status["pid"] == new["pid"] and status["state"] == "running", "no second restart within the cooldown"
        stop.wait(0.5)
    assert sample(scrape(svc), 'clawsvc_gateway_restarts_total{reason="memory"}') == 1
    log = svc.log()[since:]
    assert log.count("restarting it as a new process once its active work is done") == 1
    assert len(re.findall(r"started gateway pid \d+:", log)) == 1 and "sending SIGKILL" not in log
