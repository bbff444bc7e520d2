"""The first gateway's head start: an exit before the executor claims the process is held, then handed over."""

from __future__ import annotations

import threading

from clawsvc.gateway.exits import ExitInfo
from clawsvc.service.headstart import ExitRelay


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
