"""The service side of an upgrade: restart the gateway through the running clawsvc (as `clawsvc restart-gateway`
does) and wait until the version the links now name serves: state running, a new pid, that version, healthy."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from clawsvc.commands.control.client import MARGIN, STATUS_TIMEOUT, client_socket
from clawsvc.config import Config
from clawsvc.control.client import request
from clawsvc.control.wire import ControlError, ServiceNotRunning
from clawsvc.service.status import BadSnapshot, Snapshot, State

HEALTH_CHECKS = 3
HEALTH_EVERY = 1.0
POLL_EVERY = 0.2


class ServiceGone(Exception):
    """The service is not running (or stopped meanwhile); str() is one line."""


class NotServing(Exception):
    """The restarted gateway did not come up healthy; str() is one line saying why."""


@dataclass(frozen=True)
class Served:
    """What a good switch looked like: the new gateway's pid and the seconds from the restart request to state
    `running` (the downtime) and to the last good health check."""
    pid: int
    running_after: float
    healthy_after: float


class Service:
    """The running clawsvc of one config, reached over its control socket."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = client_socket(config.control.socket)
        self._pause = threading.Event()  # never set: a sleep that Ctrl-C still interrupts

    def status(self) -> Snapshot:
        """ServiceGone when nothing answers on the socket; NotServing for a refusal or an unusable reply."""
        try:
            return Snapshot.from_dict(self._ask({"cmd": "status"}, STATUS_TIMEOUT))
        except BadSnapshot as exc:
            raise NotServing(f"clawsvc sent a status reply this client cannot use: {exc}") from None

    def restart_and_verify(self, version: str) -> Served:
        """Restart the gateway, then wait (gateway.stop_timeout + start_timeout + margin) for `version`."""
        before = self.status()  # just before the restart: its pid is not the new one
        started = time.monotonic()
        bound = self.config.gateway.stop_timeout + self.config.gateway.start_timeout + MARGIN
        answer = self._ask({"cmd": "restart-gateway", "mode": "fresh", "why": "upgrade"}, bound)  # drained, new
        counted = answer.get("restarts") if isinstance(answer, dict) else None
        # the service's restart count once ours is done: a crash loop of the old version between `before` and
        # the request must not pass for a crash of the new one
        baseline = counted if isinstance(counted, int) and not isinstance(counted, bool) else before.restarts + 1
        snap = self._wait_running(version, before.pid, baseline, started, bound)
        running_after = time.monotonic() - started
        assert snap.pid is not None
        self._check_health(snap.pid)
        return Served(snap.pid, running_after, time.monotonic() - started)

    def _ask(self, message: dict[str, Any], timeout: float) -> Any:
        try:
            return request(self.path, message, timeout)
        except ServiceNotRunning as exc:
            raise ServiceGone(f"clawsvc is {exc}") from None
        except ControlError as exc:
            raise NotServing(f"clawsvc refused {message['cmd']}: {exc.code}: {exc.message}") from None

    def _wait_running(self, version: str, old_pid: int | None, restarts: int, started: float,
                      bound: float) -> Snapshot:
        """The first snapshot of a new gateway of `version` running; NotServing as soon as it cannot come (more
        restarts than `restarts`: the new version crashed)."""
        while True:
            snap = self.status()
            if snap.state is State.RUNNING and snap.pid not in (None, old_pid):
                if snap.gateway_version != version:
                    raise NotServing(f"the gateway now running says it is {snap.gateway_version or 'unknown'}, "
                                     f"not {version}")
                return snap
            if snap.state is State.ERROR or snap.state is State.STOPPING:
                raise NotServing(f"clawsvc is {snap.state.value}: {snap.error or snap.cause or snap.last_exit}")
            if snap.restarts > restarts:  # the one we asked for, then a crash of the new version
                raise NotServing(f"the new gateway {snap.last_exit or 'failed'}; clawsvc is {snap.state.value}: "
                                 f"{snap.cause or snap.error or 'restarting it'}")
            if time.monotonic() - started >= bound:
                raise NotServing(f"{version} was not running {bound:g}s after the restart; clawsvc is "
                                 f"{snap.state.value}: {snap.cause or snap.error or 'no reason given'}")
            self._pause.wait(POLL_EVERY)

    def _check_health(self, pid: int) -> None:
        timeout = self.config.health.timeout
        for number in range(1, HEALTH_CHECKS + 1):
            try:
                self._ask({"cmd": "rpc", "method": "health", "params": None, "timeout": timeout}, timeout + MARGIN)
            except NotServing as exc:
                raise NotServing(f"health check {number}/{HEALTH_CHECKS} failed: {exc}") from None
            if number < HEALTH_CHECKS:
                self._pause.wait(HEALTH_EVERY)
        snap = self.status()
        if snap.pid != pid or snap.state is not State.RUNNING:
            raise NotServing(f"gateway pid {pid} did not stay up through the health checks (now "
                             f"{snap.state.value}, pid {snap.pid or '-'})")
