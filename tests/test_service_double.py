"""`clawsvc run` as a real process supervising the gateway double (tests/double), watched through a fake
systemd notify socket (tests/notify_peer.py) and its control socket. Tiny delays and timeouts keep it fast."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from double import double_command, free_port, pid_alive, start_double
from service_proc import ServiceProcess, base_config, merge, poll

from clawsvc import exitcodes

FAST = {
    "gateway": {"stop_timeout": 1.0, "start_timeout": 20.0},
    "connection": {"handshake_timeout": 0.5, "request_timeout": 2.0},
    "health": {"interval": 0.5, "timeout": 0.5, "failures": 2, "tick_grace": 2.0},
    "reconnect": {"base_delay": 0.05, "max_delay": 0.2, "max_attempts": 5, "stable_after": 60.0},
}
STARTED = r"started gateway pid (\d+) on port"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for svc in started:
        svc.close()


def run_service(services: list[ServiceProcess], root: Path, double_env: dict[str, str] | None = None,
                extra: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                port: int | None = None) -> ServiceProcess:
    config = merge(base_config(root, double_command(), port or free_port()), FAST)
    config = merge(config, {"gateway": {"env": {"DOUBLE_TICK_MS": "300", **(double_env or {})}}, **(extra or {})})
    svc = ServiceProcess.start(root, config, env=env)
    services.append(svc)
    return svc


def spawned(svc: ServiceProcess) -> list[int]:
    return [int(pid) for pid in re.findall(STARTED, svc.log())]


def running_with(svc: ServiceProcess, timeout: float = 20.0, not_pid: int | None = None) -> dict[str, Any]:
    return svc.wait_state(lambda s: s["state"] == "running" and s["pid"] != not_pid, timeout,
                          f"state running (pid other than {not_pid})")


def test_ready_after_hello_ok_with_status_lines(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path, env={"WATCHDOG_USEC": "400000"})
    ready = svc.peer.wait_for("^READY=1", 20)
    status = svc.status()
    assert status["state"] == "running" and status["owned"] is True and status["gatewayVersion"] == "double-1"
    assert f"running pid={status['pid']} port={status['port']} gateway=double-1" in ready.text
    texts = svc.peer.messages()
    assert any(t.startswith("STATUS=starting") for t in texts[: texts.index(ready.text)])
    svc.peer.wait_for("^WATCHDOG=1$", 10, since=svc.peer.mark())
    assert svc.cli("status").returncode == 0
    assert svc.terminate() == 0
    assert svc.leftovers() == []


def test_crash_loop_gives_up_with_exit_1(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path, double_env={"DOUBLE_EXIT_AFTER": "0.3", "DOUBLE_EXIT_CODE": "1"},
                      extra={"reconnect": {"max_attempts": 3}})
    assert svc.wait(60) == exitcodes.FAIL
    log = svc.log()
    assert "gave up after 3 attempts" in log
    assert len(spawned(svc)) == 4  # the first start and three restarts
    assert len(re.findall(r"ERROR .*gave up after", log)) == 1
    assert svc.peer.messages()[-1].startswith("STATUS=error: ") and "gave up" in svc.peer.messages()[-1]
    assert svc.leftovers() == []


def test_gateway_exit_78_is_not_retried(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path, double_env={"DOUBLE_EXIT_AFTER": "0.3", "DOUBLE_EXIT_CODE": "78"})
    assert svc.wait(30) == exitcodes.CONFIG
    log = svc.log()
    assert len(spawned(svc)) == 1
    assert "exited with status 78" in log and "Missing config" in log
    assert "restarting in" not in log


def test_unavailable_window_is_waited_out(services: list[ServiceProcess], tmp_path: Path) -> None:
    events = tmp_path / "requests.jsonl"
    svc = run_service(services, tmp_path, double_env={"DOUBLE_UNAVAILABLE_FOR": "1.5",
                                                      "DOUBLE_EVENT_FILE": str(events)})
    svc.peer.wait_for("^READY=1", 30)
    assert len(spawned(svc)) == 1 and svc.status()["restarts"] == 0
    connects = [line for line in events.read_text().splitlines() if '"method": "connect"' in line]
    assert len(connects) >= 2, "the first connects should have met the UNAVAILABLE window and been retried"
    assert len(connects) < 30, "retryAfterMs (500 ms) should space the retries out"


def test_link_drop_with_the_process_alive_reconnects_to_the_same_pid(services: list[ServiceProcess],
                                                                      tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    mark = svc.peer.mark()
    result = svc.cli("rpc", "double.close", '{"code": 1011, "reason": "test drop"}')
    assert result.returncode == 0, result.stderr
    svc.peer.wait_for(r"^STATUS=reconnecting", 10, since=mark)
    svc.peer.wait_for(r"^STATUS=running", 10, since=mark)
    assert svc.status()["pid"] == pid and spawned(svc) == [pid]
    assert "test drop" in svc.log()
    health = svc.cli("rpc", "health")
    assert health.returncode == 0 and '"ok": true' in health.stdout


def test_tick_silence_gets_a_fresh_link_to_the_same_gateway(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    mark = svc.peer.mark()
    assert svc.cli("rpc", "double.silence").returncode == 0
    svc.peer.wait_for(r"^STATUS=reconnecting", 10, since=mark)
    svc.peer.wait_for(r"^STATUS=running", 10, since=mark)
    assert svc.status()["pid"] == pid and spawned(svc) == [pid]
    assert re.search(r"no tick for|health check failed", svc.log())


def test_a_hung_gateway_is_replaced_while_the_watchdog_keeps_going(services: list[ServiceProcess],
                                                                   tmp_path: Path) -> None:
    # ticks every 30 s (as the real gateway): failed health checks find the hang while the link looks open
    svc = run_service(services, tmp_path, double_env={"DOUBLE_TICK_MS": "30000"}, env={"WATCHDOG_USEC": "2000000"})
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    mark = svc.peer.mark()
    assert svc.cli("rpc", "double.hang").returncode == 0
    svc.wait_log(r"replacing gateway pid \d+: 2 consecutive failed health checks", 20)
    status = running_with(svc, 30, not_pid=pid)
    assert not pid_alive(pid)
    assert status["lastExit"].startswith("killed by SIGKILL"), "a hung gateway ignores SIGTERM"
    pings = [d.at for d in svc.peer.find("^WATCHDOG=1$", since=mark)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert pings and max(gaps) < 2.0, f"the loop missed systemd's watchdog (WATCHDOG_USEC=2s): gaps {gaps}"


def test_shutdown_with_restart_expected_waits_instead_of_spawning(services: list[ServiceProcess],
                                                                  tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    mark = svc.peer.mark()
    params = '{"event": "shutdown", "payload": {"reason": "in-process restart", "restartExpectedMs": 2000}}'
    svc.cli("rpc", "double.event", params)  # may fail: clawsvc drops the link as soon as it sees the event
    svc.wait_log(r"gateway is restarting itself \(in-process restart\); waiting up to", 10)
    svc.peer.wait_for(r"^STATUS=reconnecting.*restarting itself", 10, since=mark)
    svc.peer.wait_for(r"^STATUS=running", 10, since=mark)
    assert svc.status()["pid"] == pid and spawned(svc) == [pid]


def test_restart_gateway_over_the_control_socket(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    result = svc.cli("restart-gateway")
    assert result.returncode == 0, result.stderr
    status = running_with(svc, 20, not_pid=pid)
    assert status["restarts"] == 1 and status["reconnectAttempts"] == 0
    assert not pid_alive(pid) and spawned(svc) == [pid, status["pid"]]


def test_reload_with_an_unreadable_token_file_keeps_running(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    svc.rewrite_config(merge(svc.config, {"auth": {"token_file": str(tmp_path / "missing-token")}}))
    mark = svc.peer.mark()
    svc.send_signal(signal.SIGHUP)
    svc.peer.wait_for(r"^READY=1\nSTATUS=.*reload failed", 10, since=mark)
    assert svc.popen.poll() is None and svc.status()["pid"] == pid
    assert "reload failed" in svc.log() and "missing-token" in svc.log()


def test_reload_after_a_token_rotation_restarts_the_gateway_with_the_new_token(services: list[ServiceProcess],
                                                                             tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    Path(svc.config["auth"]["token_file"]).write_text(secrets.token_urlsafe(32) + "\n")
    svc.send_signal(signal.SIGHUP)
    status = running_with(svc, 20, not_pid=pid)
    assert "the gateway token or provider keys changed" in svc.log()
    environ = Path(f"/proc/{status['pid']}/environ").read_bytes().split(b"\0")
    assert f"OPENCLAW_GATEWAY_TOKEN={svc.token}".encode() in environ, "the new gateway got the rotated token"
    assert svc.cli("rpc", "health").returncode == 0


def test_adopts_an_existing_gateway_and_leaves_it_running(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc_root = tmp_path / "svc"
    svc_root.mkdir()
    token = "adopt-" + "x" * 40
    (svc_root / "token").write_text(token + "\n")
    (svc_root / "token").chmod(0o600)
    with start_double(tmp_path / "existing", token=token) as existing:
        svc = run_service(services, svc_root, port=existing.port)
        svc.peer.wait_for("^READY=1", 20)
        status = svc.status()
        assert status["owned"] is False and status["pid"] is None and status["state"] == "running"
        assert svc.peer.wait_for("^READY=1", 1).text.endswith("adopted")
        refused = svc.cli("restart-gateway")
        assert refused.returncode == 1 and "NOT_OWNED" in refused.stderr
        assert svc.terminate() == 0
        assert existing.popen.poll() is None and existing.accepts_tcp()
        assert spawned(svc) == []


def test_a_gateway_with_another_token_is_a_config_error(services: list[ServiceProcess], tmp_path: Path) -> None:
    with start_double(tmp_path / "other", token="someone-elses-" + "y" * 30) as other:
        svc = run_service(services, tmp_path / "svc", port=other.port)
        assert svc.wait(30) == exitcodes.CONFIG
        assert other.popen.poll() is None
    assert "rejected our token" in svc.log() and spawned(svc) == []
    assert svc.peer.find(r"^STATUS=error: .*rejected our token")


def test_a_stranger_on_the_port_is_named_and_nothing_is_spawned(services: list[ServiceProcess],
                                                                tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen(8)
        svc = run_service(services, tmp_path, port=stranger.getsockname()[1])
        assert svc.wait(30) == exitcodes.FAIL
    log = svc.log()
    assert re.search(rf"held by pid {os.getpid()} \(\S+\)", log), log[-2000:]
    assert spawned(svc) == []


def test_sigterm_during_start_exits_quickly_without_orphans(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path, double_env={"DOUBLE_STARTUP_DELAY": "30"})
    svc.wait_log(STARTED, 20)
    pid = spawned(svc)[0]
    started = time.monotonic()
    assert svc.terminate(20) == 0
    assert time.monotonic() - started < 15
    assert "STOPPING=1" in svc.peer.messages()
    assert not svc.peer.find("^READY=1")
    poll(lambda: not pid_alive(pid), 5, "the gateway double to be gone")
    assert svc.leftovers() == []
