"""The first gateway's head start: an exit before the executor claims the process is held, then handed over."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import socket
import threading

import pytest

from clawsvc import exitcodes
from clawsvc.config import Config
from clawsvc.gateway.exits import ExitInfo
from clawsvc.gateway.process import GatewayProcess
from clawsvc.service import headstart, loop, run
from clawsvc.service.headstart import ExitRelay, HeadStart
from clawsvc.service.loop import Supervisor
from clawsvc.service.messages import PortTaken, RestartRequested, Spawned
from clawsvc.service.notify import Notifier


def test_an_exit_before_the_claim_is_handed_over_at_the_claim() -> None:
    relay = ExitRelay()
    early = ExitInfo(1, None)
    relay(early)
    got: list[ExitInfo] = []
    relay.attach(got.append)
    assert got == [early]


def test_after_the_claim_an_exit_goes_straight_through_once() -> None:
    relay = ExitRelay()
    got: list[ExitInfo] = []
    relay.attach(got.append)
    assert got == []
    late = ExitInfo(None, 9)
    relay(late)
    assert got == [late]


def test_an_exit_racing_the_claim_is_delivered_exactly_once() -> None:
    for _ in range(200):
        relay = ExitRelay()
        got: list[ExitInfo] = []
        info = ExitInfo(0, None)
        exiting = threading.Thread(target=relay, args=(info,))
        exiting.start()
        relay.attach(got.append)
        exiting.join()
        assert got == [info]


# ------------------------------------------------------------------ the claim and every way out before it


class FakeProcess:
    """Stands in for the head start's GatewayProcess: records stops."""

    def __init__(self) -> None:
        self.stops = 0

    def stop(self, timeout: float | None = None) -> ExitInfo:
        self.stops += 1
        return ExitInfo(0, None)


def fake_head_start(pid: int = 4242) -> HeadStart:
    return HeadStart(FakeProcess(), pid, ExitRelay())  # type: ignore[arg-type]


def config_on(port: int) -> Config:
    config = Config()
    return dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, port=port))


def test_a_restart_asked_before_the_claim_still_claims_the_head_start() -> None:
    """A control-socket restart queued before the loop's first step makes the machine probe again: the port is
    held by our own unclaimed gateway, which must be claimed, not named a stranger (exit 1, or adopted)."""
    with socket.socket() as holder:  # the head start's gateway listening on its port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        head_start = fake_head_start()
        supervisor = Supervisor(config_on(holder.getsockname()[1]), lambda c: ("t" * 32, {}), Notifier({}),
                                first_secrets=("t" * 32, {}), head_start=head_start)
        supervisor.post(RestartRequested("asked over the control socket", None))
        supervisor.executor.run(supervisor._first)
        seen: list[object] = []
        while not any(isinstance(m, Spawned | PortTaken) for m in seen):
            message = supervisor.queue.get(timeout=30)
            seen.append(message)
            if not isinstance(message, Spawned):
                supervisor._step(message)
    assert [m for m in seen if isinstance(m, PortTaken)] == []
    spawned = [m for m in seen if isinstance(m, Spawned)]
    assert [(m.gen, m.pid) for m in spawned] == [(supervisor.state.book.gen, 4242)]
    assert head_start.claimed


def test_a_failure_to_set_up_the_supervisor_stops_the_head_start(monkeypatch: pytest.MonkeyPatch) -> None:
    head_start = fake_head_start()
    monkeypatch.setattr(run, "load_config", lambda path: Config())
    monkeypatch.setattr(run, "preflight", lambda config: None)
    monkeypatch.setattr(run, "load_secrets", lambda config: ("t" * 32, {}))
    monkeypatch.setattr(run.proctree, "become_subreaper", lambda: None)
    monkeypatch.setattr(run.headstart, "begin", lambda config, token, env, early: head_start)

    def broken(*args: object, **kwargs: object) -> None:
        raise ImportError("websocket is missing")

    monkeypatch.setattr(loop, "Supervisor", broken)
    saved = {signum: signal.getsignal(signum) for signum in run.HANDLED_SIGNALS}
    try:
        code = run.main(argparse.Namespace(config=None))
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert code == exitcodes.FAIL
    assert head_start.process.stops == 1  # type: ignore[attr-defined]


def test_a_surprise_in_the_head_start_leaves_the_spawn_to_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    def surprise(self: GatewayProcess, early: object = None) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(headstart, "port_in_use", lambda port: False)
    monkeypatch.setattr(GatewayProcess, "start", surprise)
    assert headstart.begin(Config(), "t" * 32, {}) is None
