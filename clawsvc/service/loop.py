"""The supervisor's loop: wait for a message or the next timer, `step` the machine, hand the effects to the
executor. Nothing here blocks but the wait; the watchdog ping (a timer like the others) proves the loop lives."""

from __future__ import annotations

import queue
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from clawsvc.config import Config
from clawsvc.gateway.protocol import GatewayError
from clawsvc.jsontext import RawJSON
from clawsvc.service import machine
from clawsvc.service.eventhub import Feed
from clawsvc.service.executor import Executor, Secrets
from clawsvc.service.messages import Message, RestartCause, RestartMode, RestartRequested, TimerFired, TimerKind
from clawsvc.service.notify import Notifier
from clawsvc.service.states import MState, Stopped, next_deadline

IDLE_WAIT = 60.0  # with no timer pending (no watchdog, nothing to retry), still wake up now and then
REPLY_WAIT = 10.0  # a control client asking for a restart waits this long for the loop's answer


class Supervisor:
    """Public surface for `clawsvc run` and the control socket: post, run, status, metrics, rpc, restart_gateway,
    event_history, subscribe, dashboard."""

    def __init__(self, config: Config, secrets: Secrets, notifier: Notifier,
                 clock: Callable[[], float] = time.monotonic, seed: int | None = None,
                 first_secrets: tuple[str, Mapping[str, str]] | None = None) -> None:
        """`first_secrets`: what `secrets(config)` gave already."""
        self.clock = clock
        self.queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.executor = Executor(self.queue.put, notifier, secrets, clock, config)
        token, provider_env = first_secrets if first_secrets is not None else secrets(config)
        seed = random.SystemRandom().getrandbits(63) if seed is None else seed
        self.state: MState
        self.state, self._first = machine.start(config, token, provider_env, clock(),
                                                notifier.watchdog_interval, seed)

    @property
    def on_reload(self) -> Callable[[Config, Config], None] | None:
        return self.executor.on_reload

    @on_reload.setter
    def on_reload(self, callback: Callable[[Config, Config], None] | None) -> None:
        self.executor.on_reload = callback

    def post(self, message: Message) -> None:
        self.queue.put(message)

    def run(self) -> int:
        self.executor.run(self._first)
        while not isinstance(self.state, Stopped):
            self._fire_due_timers()
            if isinstance(self.state, Stopped):
                break
            message = self._wait()
            if message is not None:
                self._step(message)
        self.executor.close(self.state.book.config)
        return self.state.book.exit_code

    def _wait(self) -> Message | None:
        due = next_deadline(self.state)
        timeout = IDLE_WAIT if due is None else max(0.0, due[0] - self.clock())
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _fire_due_timers(self) -> None:
        """Timers fire even while messages keep arriving; each firing moves its own deadline on."""
        for _ in TimerKind:
            due = next_deadline(self.state)
            if due is None or due[0] > self.clock():
                return
            self._step(TimerFired(due[1]))

    def _step(self, message: Message) -> None:
        self.state, effects = machine.step(self.state, message, self.clock())
        self.executor.run(effects)

    # ------------------------------------------------------------------ control socket (called from its threads)

    def status(self) -> dict[str, Any]:
        return self.executor.snapshot.to_dict(self.clock())

    def metrics(self) -> str:
        return self.executor.metrics_text()

    def rpc(self, method: str, params: Any, timeout: float | None) -> Any:
        return self.executor.rpc(method, params, timeout)

    def event_history(self, names: frozenset[str] | None) -> RawJSON:
        return self.executor.events.history(names)

    def subscribe(self, names: frozenset[str] | None) -> Feed:
        return self.executor.events.subscribe(names)

    def dashboard(self) -> dict[str, Any]:
        return self.executor.dashboard.issue()

    def restart_gateway(self, mode: str, why: str = "requested") -> dict[str, Any]:
        """Whether the gateway may be restarted (NOT_OWNED when adopted), and how, is the machine's call; `why`
        (requested, upgrade) is what the restart is counted as."""
        reply: Future[dict[str, Any]] = Future()
        asked = "asked by `clawsvc upgrade`" if why == "upgrade" else "asked over the control socket"
        self.post(RestartRequested(asked, reply, RestartMode(mode), RestartCause(why)))
        try:
            return reply.result(timeout=REPLY_WAIT)
        except TimeoutError:
            raise GatewayError("UNAVAILABLE", f"clawsvc did not answer within {REPLY_WAIT:g}s") from None
