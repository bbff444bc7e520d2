"""The supervisor in process: its transition table, timers and policies (fake clock, fake connections, no sleeping).
`clawsvc run` as a real process with the gateway double is in test_service_double.py."""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import pytest
import tenacity

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
from clawsvc.policy import ReadyGate, RestartPolicy, readiness_retrying
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


def test_a_late_connect_failure_after_our_gateway_died_is_not_a_second_failure() -> None:
    supervisor = make_supervisor()
    supervisor.state = State.RUNNING
    supervisor._dispatch(ProcessExited(supervisor.gen, 4242, ExitInfo(1, None)))
    assert supervisor.policy.attempts == 1 and supervisor.restart_at is not None
    supervisor._dispatch(ConnectFailed(supervisor.gen, "connection refused", fatal=False))
    assert supervisor.policy.attempts == 1, "one crash must count as one restart attempt"


def test_restarting_an_adopted_gateway_drops_its_link_first() -> None:
    supervisor = make_supervisor()
    probes: list[int] = []
    supervisor.connector.probe = lambda config, token, gen: probes.append(gen)  # type: ignore[method-assign]
    connection = FakeConnection()
    supervisor.state, supervisor.adopted, supervisor.connection = State.RUNNING, True, connection  # type: ignore[assignment]
    supervisor._dispatch(RestartRequested("config reload changed gateway.port"))
    assert connection.closed.wait(5) and supervisor.connection is None
    assert probes == [supervisor.gen] and supervisor.state is State.STARTING


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
    assert policy.failure() == 0.0, "after a reset the next failure restarts at once again"
    assert policy.ran_for(3600.0) and policy.attempts == 0
    assert not policy.ran_for(3600.0), "nothing to forget: no reset is reported"


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
    assert waits[0] <= 0.05 and waits == sorted(waits) and max(waits) <= 0.1
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


def test_ready_gate_ends_a_retry_after_wait_when_readyz_says_yes() -> None:
    answers = iter([False, False, True])
    calls: list[float] = []

    def ready() -> bool:
        calls.append(time.monotonic())
        return next(answers)

    gate = ReadyGate(threading.Event(), ready)
    started = time.monotonic()
    gate(30.0)
    assert len(calls) == 3, "the gate returns on the first yes, not after the 30 s wait"
    assert calls[-1] - started < 5.0


def test_ready_gate_returns_at_once_on_cancel_and_never_probes_without_a_probe() -> None:
    cancel = threading.Event()
    cancel.set()
    probed: list[bool] = []
    ReadyGate(cancel, lambda: probed.append(True) or False)(30.0)
    assert probed == []
