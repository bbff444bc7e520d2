"""Waiting until a gateway is up, the way its supervisor contract defines it: it owns its listener (the peer
check), answers a hello-ok, and `/startupz` says "started". On top of tenacity's wait/stop strategies; the
service's connector and the upgrade's canary both wait this way (the restart policy is pure:
clawsvc/service/backoff.py)."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

import tenacity

from clawsvc.gateway.probes import startup_status
from clawsvc.gateway.protocol import GatewayError, RetryableError, TransportError

PROBE_EVERY = 0.025  # a refused loopback connect or a /readyz GET costs well under a millisecond


def _readiness_wait(retry_state: tenacity.RetryCallState) -> float:
    """The gateway's retryAfterMs when it gave one (a gated sleep may end it early, see ReadyGate);
    otherwise probe fast at first (25 ms) and slow to 100 ms while nothing listens yet."""
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None else None
    if isinstance(error, RetryableError) and error.retry_after is not None:
        return error.retry_after
    return min(0.1, PROBE_EVERY * (1.25 ** (retry_state.attempt_number - 1)))


class ReadyGate:
    """tenacity's sleep between handshakes: ends early on a stop, or as soon as the gateway's own startup probe
    says yes. retryAfterMs=500 paces clients that cannot know better; a supervisor that can ask /startupz (200
    "started" tens of ms before a handshake succeeds) should not add half a second to every start and crash
    recovery."""

    def __init__(self, cancel: threading.Event, ready: Callable[[], bool] | None = None) -> None:
        self.cancel = cancel
        self.ready = ready

    def __call__(self, seconds: float) -> None:
        if self.ready is None or seconds <= PROBE_EVERY:
            self.cancel.wait(seconds)
            return
        end = time.monotonic() + seconds
        while not self.cancel.wait(min(PROBE_EVERY, max(0.0, end - time.monotonic()))):
            if time.monotonic() >= end or self.ready():
                return


RETRY_ON = (RetryableError, TransportError)


def readiness_retrying(cancel: threading.Event, deadline: float, still_worth_it: Callable[[], bool],
                       retry_on: tuple[type[GatewayError], ...] = RETRY_ON,
                       ready: Callable[[], bool] | None = None) -> tenacity.Retrying:
    """Retry a handshake until hello-ok, the deadline, a cancel (stop) or the process dying.
    Auth and protocol errors are never retried: the same token or version cannot start working."""

    def retry_if(retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        error = outcome.exception()
        return isinstance(error, retry_on) and still_worth_it()

    return tenacity.Retrying(
        retry=retry_if,
        wait=_readiness_wait,
        stop=tenacity.stop_after_delay(deadline) | tenacity.stop_when_event_set(cancel),
        sleep=ReadyGate(cancel, ready),
        reraise=True,
    )


class Closable(Protocol):
    def close(self) -> None: ...


Link = TypeVar("Link", bound=Closable)


def started(port: int) -> bool:
    return startup_status(port) == "started"


def connect_when_up(connect: Callable[[], Link], port: int, cancel: threading.Event, timeout: float,
                    still_worth_it: Callable[[], bool],
                    retry_on: tuple[type[GatewayError], ...] = RETRY_ON) -> Link:
    """connect() (a handshake to hello-ok) until the gateway is up: a hello-ok while /startupz still says
    "starting" or "draining" does not count (the link is closed and the handshake retried). /startupz saying
    nothing usable (an older gateway) does not hold it back. The last error when it never came up."""
    retrying = readiness_retrying(cancel, timeout, still_worth_it, retry_on, functools.partial(started, port))
    for attempt in retrying:
        with attempt:
            link = connect()
            status = startup_status(port)
            if status in ("starting", "draining"):
                link.close()
                raise RetryableError("UNAVAILABLE", f"the gateway answered, but /startupz says {status}")
    return link
