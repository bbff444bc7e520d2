"""`clawsvc run` supervising the real OpenClaw gateway, watched through a fake systemd notify socket.

One clawsvc process is shared by the ordered tests below (a real gateway start costs 7-90 s on a loaded
2-core machine): ready → status/rpc → reloads → SIGKILL → SIGSTOP → SIGTERM. Timings are printed (-s).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from realgw import connect, free_port, gateway_env
from service_proc import ServiceProcess, base_config, merge, poll
from slowmodel_kit import EventsFollower

from clawsvc import exitcodes
from clawsvc.commands.runtime.provision import Installation
from clawsvc.gateway import proctree

pytestmark = pytest.mark.realgateway

START_TIMEOUT = 180.0  # seconds; 7 s idle, 90 s seen here with other gateways starting on the same 2 cores
WATCHDOG_USEC = 1_000_000
STARTED = r"started gateway pid (\d+) on port"


class PortWatcher:
    """Notes when something first accepts TCP on a port (to check that READY never precedes it)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.opened_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="clawsvc-test-port", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set() and self.opened_at is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                self.opened_at = time.monotonic()
            self._stop.wait(0.05)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Shared:
    svc: ServiceProcess
    watcher: PortWatcher
    started_at: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.svc.config["gateway"]["port"])


def real_config(root: Path, installation: Installation, port: int) -> dict[str, object]:
    state = root / "state"
    env = gateway_env(state, port)  # also writes state/openclaw.json (mode local, log file inside state)
    state.chmod(0o700)
    return merge(base_config(root, installation.command, port), {
        "gateway": {"env": env, "stop_timeout": 3.0, "start_timeout": START_TIMEOUT},
        "connection": {"handshake_timeout": 5.0},
        "health": {"interval": 1.0, "timeout": 1.0, "failures": 2},
        "reconnect": {"base_delay": 0.2, "max_delay": 2.0, "max_attempts": 5},
    })


def spawned(svc: ServiceProcess) -> list[int]:
    return [int(pid) for pid in re.findall(STARTED, svc.log())]


def gateway_tree(pid: int) -> set[int]:
    return {pid, *proctree.descendants(pid)}


@pytest.fixture(scope="module")
def shared(gateway_install: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("svc")
    port = free_port()
    watcher = PortWatcher(port)
    started_at = time.monotonic()
    svc = ServiceProcess.start(root, real_config(root, gateway_install, port),
                               env={"WATCHDOG_USEC": str(WATCHDOG_USEC)})
    try:
        yield Shared(svc, watcher, started_at)
    finally:
        watcher.close()
        svc.close()


def test_a_stranger_on_the_port_is_named_and_no_gateway_is_spawned(gateway_install: Installation,
                                                                   tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen(8)
        port = stranger.getsockname()[1]
        config = merge(real_config(tmp_path, gateway_install, port), {"connection": {"handshake_timeout": 2.0}})
        svc = ServiceProcess.start(tmp_path, config)
        try:
            began = time.monotonic()
            assert svc.wait(60) == exitcodes.FAIL
            took = time.monotonic() - began
            log = svc.log()
            assert re.search(rf"port {port} is held by pid {os.getpid()} \(\S+\)", log), log[-3000:]
            assert spawned(svc) == [] and svc.leftovers() == []
            assert svc.peer.find(rf"^STATUS=error: port {port} is held by pid {os.getpid()}")
            print(f"\nstranger on the port -> exit 1 in {took:.1f}s")
        finally:
            svc.close()


def test_ready_only_after_hello_ok(shared: Shared, gateway_install: Installation) -> None:
    svc = shared.svc
    ready = svc.peer.wait_for("^READY=1", START_TIMEOUT * 2)
    ws, hello = connect(f"ws://127.0.0.1:{shared.port}/", svc.token)  # must work at once: no UNAVAILABLE left
    ws.close()
    assert hello["server"]["version"] == gateway_install.version
    assert shared.watcher.opened_at is not None and shared.watcher.opened_at <= ready.at
    status = svc.status()
    assert status["state"] == "running" and status["owned"] is True
    assert re.search(rf"^STATUS=running pid={status['pid']} port={shared.port} gateway={gateway_install.version} "
                     r"uptime=\d+s$", ready.text, re.MULTILINE), ready.text
    before = svc.peer.datagrams()[: svc.peer.datagrams().index(ready)]
    assert any(d.text.startswith("STATUS=starting") for d in before)
    assert any(d.text.startswith("EXTEND_TIMEOUT_USEC=") for d in before)
    assert not any("READY=1" in d.text for d in before)
    spawn_log = svc.wait_log(r"is ready on port \d+ \(version [^)]*\) ([\d.]+)s after spawn", 5)
    shared.timings["spawn_to_ready"] = float(spawn_log.group(1))
    opened = shared.watcher.opened_at - shared.started_at
    print(f"\nspawn -> READY {float(spawn_log.group(1)):.1f}s; port open {opened:.1f}s and READY "
          f"{ready.at - shared.started_at:.1f}s after clawsvc started")


def test_watchdog_at_the_asked_rate(shared: Shared) -> None:
    svc = shared.svc
    mark = svc.peer.mark()
    window_start = time.monotonic()
    threading.Event().wait(5.0)  # a measuring window, not a synchronisation
    pings = svc.peer.find("^WATCHDOG=1$", since=mark)
    expected = (time.monotonic() - window_start) / (WATCHDOG_USEC / 2e6)
    assert 0.6 * expected <= len(pings) <= 1.2 * expected + 2, f"{len(pings)} pings, expected ~{expected:.0f}"


def test_status_and_rpc_through_the_running_service(shared: Shared, gateway_install: Installation) -> None:
    svc = shared.svc
    status = svc.cli("status")
    assert status.returncode == 0, status.stderr
    assert "clawsvc - OpenClaw gateway service: running" in status.stdout
    assert f"openclaw {gateway_install.version}" in status.stdout and "started by clawsvc" in status.stdout
    health = svc.cli("rpc", "health")
    assert health.returncode == 0, health.stderr
    assert '"ok": true' in health.stdout
    unknown = svc.cli("rpc", "no.such.method")
    assert unknown.returncode == 1 and "unknown method" in unknown.stderr
    assert svc.token not in status.stdout + health.stdout + unknown.stderr + svc.log()


def sighup(svc: ServiceProcess) -> tuple[int, int, int]:
    """Send SIGHUP; returns (notify mark, monotonic µs before, after) for checking RELOADING."""
    mark = svc.peer.mark()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    svc.send_signal(signal.SIGHUP)
    reloading = svc.peer.wait_for("^RELOADING=1", 10, since=mark)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = reloading.fields()
    assert set(fields) == {"RELOADING", "MONOTONIC_USEC"}, reloading.text
    assert before <= int(fields["MONOTONIC_USEC"]) <= after
    return mark, before, after


def test_sighup_with_broken_yaml_keeps_the_old_config(shared: Shared) -> None:
    svc = shared.svc
    pid = svc.status()["pid"]
    good = svc.config_path.read_text()
    svc.rewrite_config(good + "\nhealth: [unclosed\n")
    try:
        mark, _, _ = sighup(svc)
        ready = svc.peer.wait_for("^READY=1", 10, since=mark)
        assert "reload failed" in ready.text and "clawsvc.yaml" in ready.text
    finally:
        svc.config_path.write_text(good)
    assert svc.popen.poll() is None
    status = svc.status()
    assert status["state"] == "running" and status["pid"] == pid
    assert svc.wait_log(r"ERROR .*reload failed, still running on the previous config: .*clawsvc\.yaml:\d+", 5)


def test_sighup_with_a_new_log_level_keeps_the_gateway(shared: Shared) -> None:
    svc = shared.svc
    pid = svc.status()["pid"]
    svc.rewrite_config(merge(svc.config, {"logging": {"level": "info"}}))
    mark, _, _ = sighup(svc)
    svc.peer.wait_for("^READY=1", 10, since=mark)
    svc.wait_log(r"reloaded .*; no gateway restart needed", 5)
    since = len(svc.log())
    assert svc.status()["pid"] == pid
    assert "control: status" not in svc.log()[since:], "debug lines must stop after the reload to level info"
    assert spawned(svc).count(pid) == 1


def test_sighup_with_a_new_port_restarts_the_gateway_there(shared: Shared) -> None:
    svc = shared.svc
    old_pid, old_port, new_port = svc.status()["pid"], shared.port, free_port()
    svc.rewrite_config(merge(svc.config, {"gateway": {"port": new_port}}))
    mark, _, _ = sighup(svc)
    svc.peer.wait_for("^READY=1", 10, since=mark)
    svc.wait_log(r"gateway\.port changed, restarting the gateway", 5)
    status = svc.wait_state(lambda s: s["state"] == "running" and s["pid"] not in (None, old_pid)
                            and s["port"] == new_port, START_TIMEOUT, "running on the new port")
    ws, _hello = connect(f"ws://127.0.0.1:{new_port}/", svc.token)
    ws.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", old_port), timeout=2):
        pass
    assert not (gateway_tree(old_pid) & set(svc.leftovers()))
    assert svc.peer.find(rf"^STATUS=running pid={status['pid']} port={new_port} ", since=mark)


def test_sigkill_of_the_gateway_brings_a_new_one(shared: Shared) -> None:
    svc = shared.svc
    old = svc.status()["pid"]
    mark = svc.peer.mark()
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    status = svc.wait_state(lambda s: s["state"] == "running" and s["pid"] not in (None, old), START_TIMEOUT,
                            "a new gateway after SIGKILL")
    shared.timings["sigkill_to_running"] = time.monotonic() - killed_at
    assert status["lastExit"] == "killed by SIGKILL"
    svc.peer.wait_for(r"^STATUS=reconnecting.*killed by SIGKILL", 5, since=mark)
    svc.peer.wait_for(rf"^STATUS=running pid={status['pid']} ", 5, since=mark)
    assert set(svc.leftovers()) <= gateway_tree(status["pid"]), "processes of the killed gateway survive"
    print(f"\nSIGKILL -> running again {shared.timings['sigkill_to_running']:.1f}s")


def test_sigstop_of_the_gateway_gets_it_replaced(shared: Shared) -> None:
    svc = shared.svc
    old = svc.status()["pid"]
    stopped_at = time.monotonic()
    os.kill(old, signal.SIGSTOP)
    try:
        svc.wait_log(rf"replacing gateway pid {old}: 2 consecutive failed health checks", 60)
        shared.timings["sigstop_detected"] = time.monotonic() - stopped_at
        status = svc.wait_state(lambda s: s["state"] == "running" and s["pid"] not in (None, old), START_TIMEOUT,
                                "a new gateway after SIGSTOP")
        shared.timings["sigstop_to_running"] = time.monotonic() - stopped_at
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old, signal.SIGCONT)
    assert status["lastExit"] == "killed by SIGKILL (forced: it did not stop within stop_timeout)"
    assert set(svc.leftovers()) <= gateway_tree(status["pid"])
    print(f"\nSIGSTOP -> replaced in {shared.timings['sigstop_detected']:.1f}s, running again "
          f"{shared.timings['sigstop_to_running']:.1f}s")


def test_events_follow_shows_a_restart_then_the_gateways_own_events(shared: Shared) -> None:
    svc = shared.svc
    old = svc.wait_state(lambda s: s["state"] == "running", START_TIMEOUT, "running")["pid"]
    follower = EventsFollower(svc)
    try:
        follower.wait_subscribed(svc)
        # --force: a new gateway process (the default, the gateway's own in-process restart, is in test_inflight_real)
        assert svc.cli("restart-gateway", "--force").returncode == 0
        running = poll(lambda: [e for e in follower.named("state") if e["payload"]["to"] == "running"],
                       START_TIMEOUT, "state running again")[0]
        back = poll(lambda: [e for e in follower.lines if e["source"] == "gateway" and e["time"] > running["time"]],
                    120, "an event from the gateway after it is back")[0]
        seen = [(e["name"], e["payload"].get("to") if e["name"] == "state" else None)
                for e in follower.lines if e["source"] == "service" and e["name"] != "reload"]
        assert seen == [("restart.requested", None), ("state", "starting"), ("gateway.exited", None),
                        ("gateway.spawned", None), ("state", "running")], seen
        exited, spawned_event = follower.named("gateway.exited")[0], follower.named("gateway.spawned")[0]
        assert exited["payload"]["pid"] == old and spawned_event["payload"] == {"pid": svc.status()["pid"]}
        print(f"\nevents after the restart: gateway sent {back['name']!r} "
              f"({sorted({str(e['name']) for e in follower.lines if e['source'] == 'gateway'})})")
    finally:
        follower.close()


def test_sigterm_stops_everything(shared: Shared) -> None:
    svc = shared.svc
    pid = svc.status()["pid"]
    tree = gateway_tree(pid)
    mark = svc.peer.mark()
    began = time.monotonic()
    assert svc.terminate(60) == 0
    took = time.monotonic() - began
    svc.peer.wait_for("^STOPPING=1$", 1, since=mark)
    poll(lambda: not (tree & set(svc.leftovers())) and not svc.leftovers(), 10, "no gateway process left")
    assert not svc.control_socket.exists()
    print(f"\nSIGTERM -> clawsvc exit 0 in {took:.1f}s; timings {shared.timings}")
