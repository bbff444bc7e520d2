"""The loop's parts that are not the pure machine (that is tests/test_machine_replay.py): the executor's
connection handling, the control-thread plumbing of Supervisor, and the connector's readiness retrying.
`clawsvc run` as a real process with the gateway double is in test_service_double.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import tenacity

from clawsvc.config import Config
from clawsvc.gateway.protocol import AuthError, GatewayError, RetryableError, TransportError
from clawsvc.gateway.readiness import ReadyGate, readiness_retrying
from clawsvc.service.effects import CloseLink, Reply
from clawsvc.service.executor import Executor
from clawsvc.service.loop import Supervisor
from clawsvc.service.messages import RestartMode, RestartRequested
from clawsvc.service.notify import Notifier
from clawsvc.threads import live


class FakeConnection:
    def __init__(self) -> None:
        self.closed = threading.Event()
        self.on_down: object = "unset"
        self.on_event: object = "unset"

    def close(self) -> None:
        self.closed.set()


def make_supervisor() -> Supervisor:
    return Supervisor(Config(), lambda config: ("t" * 32, {}), Notifier({}), seed=1)


def test_closing_a_link_closes_it_off_the_loop_and_silences_it() -> None:
    executor = Executor(lambda message: None, Notifier({}), lambda config: ("t" * 32, {}), time.monotonic, Config())
    connection = FakeConnection()
    executor._register(3, connection)  # type: ignore[arg-type]
    executor.run([CloseLink(3)])
    assert connection.closed.wait(5)
    assert connection.on_down is None and connection.on_event is None
    with pytest.raises(GatewayError, match="not connected"):
        executor.rpc("health", None, 1.0)


def test_a_control_restart_waits_for_the_machines_answer() -> None:
    supervisor = make_supervisor()
    answers: list[Any] = []

    def ask() -> None:
        try:
            answers.append(supervisor.restart_gateway("safe"))
        except GatewayError as exc:
            answers.append(exc.code)

    for reply in ((None, ("NOT_OWNED", "adopted")), ({"restarting": True}, None)):
        asker = threading.Thread(target=ask)
        asker.start()
        request = supervisor.queue.get(timeout=5)
        assert isinstance(request, RestartRequested) and request.reply is not None
        assert request.mode is RestartMode.SAFE
        supervisor.executor.run([Reply(request.reply, *reply)])
        asker.join(5)
    assert answers == ["NOT_OWNED", {"restarting": True}]


def test_threads_are_named_and_tracked() -> None:
    supervisor = make_supervisor()
    supervisor.executor.connector.probe(1, 1)  # port 1: nothing listens there
    assert supervisor.queue.get(timeout=5).gen == 1
    assert all(thread.name.startswith("clawsvc-") for thread in live())


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
