"""The supervisor: its transition table and policies (in process, fake clock, no sleeping), then `clawsvc run`
as a real process supervising the gateway double (tests/double) against a fake systemd notify socket."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tenacity
from double import double_command, free_port, pid_alive, start_double
from service_proc import ServiceProcess, base_config, merge, poll

from clawsvc import exitcodes
from clawsvc.config import Config, ReconnectConfig
from clawsvc.events import (
    Connected,
    ConnectFailed,
    GatewayEventSeen,
    GatewayShutdown,
    HealthChecked,
    LinkLost,
    PortFree,
    ProcessExited,
    RestartRequested,
    SignalReceived,
    State,
)
from clawsvc.notify import Notifier
from clawsvc.policy import RestartPolicy, readiness_retrying
from clawsvc.process import ExitInfo
from clawsvc.protocol import AuthError, GatewayEvent, HelloOk, LinkDown, RetryableError, TransportError
from clawsvc.supervisor import TRANSITIONS, Supervisor

# ------------------------------------------------------------------ in process: table, timers, policies


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingNotifier(Notifier):
    def __init__(self, watchdog_usec: int | None = None) -> None:
        super().__init__({})
        self.watchdog_interval = watchdog_usec / 2e6 if watchdog_usec else None
        self.sent: list[str] = []

    def _send(self, message: str) -> None:
        self.sent.append(message)


class FakeConnection:
    def __init__(self) -> None:
        self.closed = threading.Event()
        self.on_down: object = "unset"
        self.on_event: object = "unset"

    def close(self) -> None:
        self.closed.set()


HELLO = HelloOk(4, "double-1", None, None, frozenset(), frozenset(), 30.0, 1 << 20, "operator", ("operator.admin",))


def sample(kind: type, gen: int) -> Any:
    """One message of each type the loop handles, from gateway generation `gen`."""
    samples: dict[type, Any] = {
        PortFree: PortFree(gen),
        Connected: Connected(gen, FakeConnection(), HELLO, False),  # type: ignore[arg-type]
        ConnectFailed: ConnectFailed(gen, "refused", fatal=False),
        ProcessExited: ProcessExited(gen, 4242, ExitInfo(1, None)),
        LinkLost: LinkLost(gen, LinkDown(1006, "gone", False)),
        GatewayShutdown: GatewayShutdown(gen, "restart", 1.0),
        GatewayEventSeen: GatewayEventSeen(gen, GatewayEvent("health", {}, 1)),
        HealthChecked: HealthChecked(gen, True, None),
        RestartRequested: RestartRequested("test"),
    }
    return samples[kind]


def make_supervisor(clock: FakeClock | None = None, notifier: Notifier | None = None) -> Supervisor:
    return Supervisor(Config(), lambda config: ("t" * 32, {}), notifier or RecordingNotifier(),
                      clock=clock or FakeClock())


def record_handlers(supervisor: Supervisor) -> list[str]:
    """Replace every handler named in TRANSITIONS by a recorder; returns the list of handlers called."""
    called: list[str] = []
    for name in {handler for row in TRANSITIONS.values() for handler in row.values()}:
        setattr(supervisor, name, lambda message, name=name: called.append(name))
    return called


def test_every_handler_in_the_table_is_a_method() -> None:
    for kind, row in TRANSITIONS.items():
        for state, name in row.items():
            assert callable(getattr(Supervisor, name, None)), f"{kind.__name__} in {state}: no method {name}"
            assert isinstance(state, State)


@pytest.mark.parametrize("kind", list(TRANSITIONS), ids=lambda kind: kind.__name__)
def test_table_walk_each_pair_is_handled_and_nothing_else(kind: type) -> None:
    for state in State:
        supervisor = make_supervisor()
        called = record_handlers(supervisor)
        supervisor.state = state
        message = sample(kind, supervisor.gen)
        supervisor._dispatch(message)
        expected = TRANSITIONS[kind].get(state)
        assert called == ([expected] if expected else []), f"{kind.__name__} in state {state.value}"
        if expected is None and isinstance(message, Connected):
            assert message.connection.closed.wait(5), "an unwanted hello-ok's connection must be closed"


@pytest.mark.parametrize("kind", [kind for kind in TRANSITIONS if "gen" in kind.__dataclass_fields__],
                         ids=lambda kind: kind.__name__)
def test_message_from_an_older_generation_is_dropped(kind: type) -> None:
    state = next(iter(TRANSITIONS[kind]))
    supervisor = make_supervisor()
    called = record_handlers(supervisor)
    supervisor.state = state
    supervisor.gen = 5
    supervisor._dispatch(sample(kind, 4))
    assert called == []
    supervisor._dispatch(sample(kind, 5))
    assert called == [TRANSITIONS[kind][state]]


def test_dropping_a_connection_closes_it_off_the_loop_and_silences_it() -> None:
    supervisor = make_supervisor()
    connection = FakeConnection()
    supervisor.connection = connection  # type: ignore[assignment]
    supervisor._drop_connection()
    assert connection.closed.wait(5)
    assert connection.on_down is None and connection.on_event is None
    assert supervisor.connection is None


def test_health_answer_for_a_dropped_connection_is_ignored() -> None:
    supervisor = make_supervisor()
    supervisor.state = State.RUNNING
    current = FakeConnection()
    supervisor.connection = current  # type: ignore[assignment]
    supervisor._dispatch(HealthChecked(supervisor.gen, False, "connection lost", FakeConnection()))  # type: ignore[arg-type]
    assert supervisor.health_failures == 0
    supervisor._dispatch(HealthChecked(supervisor.gen, False, "timeout", current))  # type: ignore[arg-type]
    assert supervisor.health_failures == 1


def test_watchdog_is_sent_from_the_loop_every_half_watchdog_usec() -> None:
    clock = FakeClock()
    notifier = RecordingNotifier(watchdog_usec=2_000_000)
    supervisor = make_supervisor(clock, notifier)
    sent = []
    for _ in range(40):  # 10 s of loop passes, 0.25 s apart
        supervisor._run_timers()
        sent.append(notifier.sent.count("WATCHDOG=1"))
        assert supervisor._next_deadline() <= 1.0
        clock.now += 0.25
    assert sent[-1] == 10  # one per second over 10 s


def test_sigterm_sends_stopping_and_ends_the_loop_without_a_gateway() -> None:
    notifier = RecordingNotifier()
    supervisor = make_supervisor(notifier=notifier)
    supervisor.state = State.RUNNING
    supervisor._dispatch(SignalReceived(signal.SIGTERM))
    assert "STOPPING=1" in notifier.sent
    assert supervisor.exiting and supervisor.state is State.STOPPING


def reconnect(base: float = 1.0, cap: float = 30.0, attempts: int = 10, stable: float = 60.0) -> ReconnectConfig:
    return ReconnectConfig(base_delay=base, max_delay=cap, max_attempts=attempts, stable_after=stable)


def test_first_failure_restarts_at_once_then_backs_off_within_the_cap() -> None:
    random.seed(5)
    policy = RestartPolicy(reconnect(base=1.0, cap=8.0, attempts=0))
    assert policy.failure() == 0.0
    delays = [policy.failure() for _ in range(40)]
    for attempt, delay in enumerate(delays, start=2):
        assert delay is not None
        assert 0.0 <= delay <= min(8.0, 1.0 * 2 ** (attempt - 2)), f"attempt {attempt}: {delay}"
    at_cap = delays[10:]
    assert len(set(at_cap)) > 1, "jitter must be kept once the delay reaches the cap"
    assert max(at_cap) > 4.0, "at the cap the delay is drawn from [0, max_delay], not stuck low"


def test_gives_up_after_max_attempts_and_zero_means_never() -> None:
    policy = RestartPolicy(reconnect(attempts=3))
    assert [policy.failure() is not None for _ in range(4)] == [True, True, True, False]
    forever = RestartPolicy(reconnect(attempts=0))
    assert all(forever.failure() is not None for _ in range(100))


def test_a_stable_run_resets_the_counter() -> None:
    policy = RestartPolicy(reconnect(attempts=3, stable=60.0))
    policy.failure()
    policy.failure()
    assert not policy.ran_for(59.9) and policy.attempts == 2
    assert policy.ran_for(60.0) and policy.attempts == 0
    assert policy.failure() == 0.0
    assert not policy.ran_for(3600.0) or policy.attempts == 0


def test_reconfigure_applies_new_limits() -> None:
    policy = RestartPolicy(reconnect(attempts=10))
    for _ in range(3):
        policy.failure()
    policy.reconfigure(reconnect(attempts=3))
    assert policy.failure() is None


def retry_state(retrying: tenacity.Retrying, attempt: int, error: BaseException) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=retrying, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_readiness_probes_fast_first_and_honours_retry_after() -> None:
    cancel = threading.Event()
    retrying = readiness_retrying(cancel, 30.0, lambda: True)
    refused = TransportError("CONNECT_FAILED", "refused")
    waits = [retrying.wait(retry_state(retrying, n, refused)) for n in range(1, 30)]
    assert waits[0] <= 0.05 and waits == sorted(waits) and max(waits) <= 0.5
    starting = RetryableError("UNAVAILABLE", "gateway starting", retry_after=0.75)
    assert retrying.wait(retry_state(retrying, 1, starting)) == 0.75


def test_readiness_retries_only_while_worth_it_and_never_on_auth() -> None:
    alive = [True]
    retrying = readiness_retrying(threading.Event(), 30.0, lambda: alive[0])
    starting = RetryableError("UNAVAILABLE", "gateway starting")
    assert retrying.retry(retry_state(retrying, 1, starting))
    assert not retrying.retry(retry_state(retrying, 1, AuthError("INVALID_REQUEST", "token mismatch")))
    alive[0] = False
    assert not retrying.retry(retry_state(retrying, 1, starting))


def test_readiness_stops_when_cancelled() -> None:
    cancel = threading.Event()
    retrying = readiness_retrying(cancel, 30.0, lambda: True)
    state = retry_state(retrying, 1, TransportError("CONNECT_FAILED", "refused"))
    assert not retrying.stop(state)
    cancel.set()
    assert retrying.stop(state)


# ------------------------------------------------------------------ `clawsvc run` with the gateway double

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


def cli(svc: ServiceProcess, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clawsvc", args[0], "-c", str(svc.config_path), *args[1:]],
                          capture_output=True, text=True, timeout=timeout)


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
    assert cli(svc, "status").returncode == 0
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
    result = cli(svc, "rpc", "double.close", '{"code": 1011, "reason": "test drop"}')
    assert result.returncode == 0, result.stderr
    svc.peer.wait_for(r"^STATUS=reconnecting", 10, since=mark)
    svc.peer.wait_for(r"^STATUS=running", 10, since=mark)
    assert svc.status()["pid"] == pid and spawned(svc) == [pid]
    assert "test drop" in svc.log()
    health = cli(svc, "rpc", "health")
    assert health.returncode == 0 and '"ok": true' in health.stdout


def test_tick_silence_gets_a_fresh_link_to_the_same_gateway(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    mark = svc.peer.mark()
    assert cli(svc, "rpc", "double.silence").returncode == 0
    svc.peer.wait_for(r"^STATUS=reconnecting", 10, since=mark)
    svc.peer.wait_for(r"^STATUS=running", 10, since=mark)
    assert svc.status()["pid"] == pid and spawned(svc) == [pid]
    assert re.search(r"no tick for|health check failed", svc.log())


def test_a_hung_gateway_is_replaced_while_the_watchdog_keeps_going(services: list[ServiceProcess],
                                                                   tmp_path: Path) -> None:
    svc = run_service(services, tmp_path, env={"WATCHDOG_USEC": "2000000"})
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    mark = svc.peer.mark()
    assert cli(svc, "rpc", "double.hang").returncode == 0
    status = running_with(svc, 30, not_pid=pid)
    assert not pid_alive(pid)
    assert status["lastExit"].startswith("killed by SIGKILL"), "a hung gateway ignores SIGTERM"
    pings = [d.at for d in svc.peer.find("^WATCHDOG=1$", since=mark)]
    gaps = [later - earlier for earlier, later in zip(pings, pings[1:], strict=False)]
    assert pings and max(gaps) < 2.0, f"the loop missed systemd's watchdog (WATCHDOG_USEC=2s): gaps {gaps}"


def test_shutdown_with_restart_expected_waits_instead_of_spawning(services: list[ServiceProcess],
                                                                  tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    mark = svc.peer.mark()
    params = '{"event": "shutdown", "payload": {"reason": "in-process restart", "restartExpectedMs": 2000}}'
    cli(svc, "rpc", "double.event", params)  # may fail: clawsvc drops the link as soon as it sees the event
    svc.wait_log(r"gateway is restarting itself \(in-process restart\); waiting up to", 10)
    svc.peer.wait_for(r"^STATUS=reconnecting.*restarting itself", 10, since=mark)
    svc.peer.wait_for(r"^STATUS=running", 10, since=mark)
    assert svc.status()["pid"] == pid and spawned(svc) == [pid]


def test_restart_gateway_over_the_control_socket(services: list[ServiceProcess], tmp_path: Path) -> None:
    svc = run_service(services, tmp_path)
    svc.peer.wait_for("^READY=1", 20)
    pid = svc.status()["pid"]
    result = cli(svc, "restart-gateway")
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
        refused = cli(svc, "restart-gateway")
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
