"""The supervisor: one loop owns the gateway's state; I/O threads only post messages to it."""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from clawsvc import exitcodes, leftovers
from clawsvc.config import Config, ConfigError, gateway_affecting, load_config
from clawsvc.connection import GatewayConnection
from clawsvc.connector import Connector, always
from clawsvc.events import (
    Connected,
    ConnectFailed,
    GatewayEventSeen,
    GatewayShutdown,
    HealthChecked,
    LinkLost,
    Message,
    PortFree,
    ProcessExited,
    RestartRequested,
    SignalReceived,
    State,
)
from clawsvc.logs import set_level
from clawsvc.notify import Notifier
from clawsvc.policy import RestartPolicy
from clawsvc.preflight import preflight
from clawsvc.process import ExitInfo, GatewayProcess, SpawnError, stop_bound
from clawsvc.protocol import GatewayError, describe_error
from clawsvc.secrets import SecretError
from clawsvc.status import Snapshot, status_line
from clawsvc.text import cut

log = logging.getLogger("clawsvc.supervisor")
Secrets = Callable[[Config], tuple[str, Mapping[str, str]]]

S = State
# (message type) -> {state it is handled in: handler}. Anything else is stale or irrelevant and is dropped.
TRANSITIONS: dict[type, dict[State, str]] = {
    PortFree: {S.STARTING: "_spawn"},
    Connected: {S.STARTING: "_on_connected", S.RECONNECTING: "_on_connected"},
    ConnectFailed: {S.STARTING: "_on_connect_failed", S.RECONNECTING: "_on_connect_failed"},
    ProcessExited: {s: "_on_exit" for s in (S.STARTING, S.RUNNING, S.RECONNECTING, S.ERROR, S.STOPPING)},
    LinkLost: {S.RUNNING: "_on_link_lost"},
    GatewayShutdown: {S.RUNNING: "_on_shutdown", S.RECONNECTING: "_on_shutdown"},
    GatewayEventSeen: {S.RUNNING: "_on_event", S.STARTING: "_on_event", S.RECONNECTING: "_on_event"},
    HealthChecked: {S.RUNNING: "_on_health"},
    RestartRequested: {S.STARTING: "_on_restart_requested", S.RUNNING: "_on_restart_requested",
                       S.RECONNECTING: "_on_restart_requested"},
}
EXTEND_EVERY = 5.0  # while starting, tell systemd every 5 s that the start is still progressing


class Supervisor:
    def __init__(self, config: Config, secrets: Secrets, notifier: Notifier,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.secrets = secrets
        self.notifier = notifier
        self.clock = clock
        self.queue: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self.connector = Connector(self.queue.put)
        self.policy = RestartPolicy(config.reconnect)
        self.on_reload: Callable[[Config, Config], None] | None = None
        self.state = State.STOPPED
        self.gen = 0
        self.token, self.provider_env = secrets(config)
        self.process: GatewayProcess | None = None
        self.stoppers: list[threading.Thread] = []
        self.connection: GatewayConnection | None = None
        self.adopted = False
        self.exit_code = exitcodes.OK
        self.exiting = False
        self.ready_sent = False
        self.planned_restart = False
        self.replacing: str | None = None
        self.restarts = 0
        self.health_failures = 0
        self.health_busy = False
        self.error: str | None = None
        self.cause: str | None = None
        self.last_exit: str | None = None
        self.started_at = self.clock()
        self.spawned_at: float | None = None
        self.ready_at: float | None = None
        self.connected_at: float | None = None
        self.version: str | None = None
        self.restart_at: float | None = None
        self.health_at: float | None = None
        self.extend_at: float | None = None
        self.watchdog_at: float | None = self.clock() if notifier.watchdog_interval else None
        self.snapshot = Snapshot.empty(config, os.getpid())

    # ------------------------------------------------------------------ the loop

    def post(self, message: Message) -> None:
        self.queue.put(message)

    def run(self) -> int:
        self._start_gateway()
        while not (self.exiting and self.process is None):
            timeout = self._next_deadline()
            try:
                message = self.queue.get(timeout=timeout)
            except queue.Empty:
                message = None
            if message is not None:
                self._dispatch(message)
            self._run_timers()
        self._wait_for_stops()
        if self.state is not State.ERROR:  # keep the reason on `systemctl status` of a failed unit
            self._set_state(State.STOPPED)
        return self.exit_code

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, SignalReceived):
            self._on_signal(message.signum)
            return
        if getattr(message, "gen", self.gen) != self.gen:
            log.debug("dropping %s from an earlier gateway generation", type(message).__name__)
            if isinstance(message, Connected):
                _close_in_background(message.connection)
            return
        handler = TRANSITIONS.get(type(message), {}).get(self.state)
        if handler is None:
            log.debug("%s ignored in state %s", type(message).__name__, self.state.value)
            if isinstance(message, Connected):
                _close_in_background(message.connection)
            return
        getattr(self, handler)(message)

    def _next_deadline(self) -> float:
        now = self.clock()
        deadlines = [d for d in (self.restart_at, self.health_at, self.extend_at, self.watchdog_at) if d is not None]
        return max(0.0, min(deadlines, default=now + 60.0) - now)

    def _run_timers(self) -> None:
        now = self.clock()
        if self.watchdog_at is not None and now >= self.watchdog_at:
            self.notifier.watchdog()
            self.watchdog_at = now + (self.notifier.watchdog_interval or 1.0)
        if self.extend_at is not None and now >= self.extend_at:
            self.notifier.extend_timeout(EXTEND_EVERY * 3)
            self.extend_at = now + EXTEND_EVERY
        if self.restart_at is not None and now >= self.restart_at:
            self.restart_at = None
            self._start_gateway()
        if self.health_at is not None and now >= self.health_at:
            self.health_at = None
            self._check_health()
        if self.state is State.RUNNING and self.ready_at is not None and self.policy.ran_for(now - self.ready_at):
            log.info("gateway stable for %.0fs; restart attempt counter reset", now - self.ready_at)
            self._publish()

    # ------------------------------------------------------------------ state

    def _set_state(self, state: State, cause: str | None = None, notify: bool = True) -> None:
        if state is not self.state:
            # an error was already logged with its full story by _fail
            why = f" ({cause})" if cause and state is not State.ERROR else ""
            log.info("state %s -> %s%s", self.state.value, state.value, why)
        self.state = state
        self.cause = cause
        self._publish(notify)

    def _publish(self, notify: bool = True) -> None:
        self.snapshot = Snapshot(
            state=self.state.value, pid=self.process.pid if self.process else None, port=self.config.gateway.port,
            owned=not self.adopted, gateway_version=self.version, ready_at=self.ready_at,
            connected_at=self.connected_at, error=self.error, cause=self.cause,
            reconnect_attempts=self.policy.attempts, restarts=self.restarts, last_exit=self.last_exit,
            service_pid=os.getpid(), started_at=self.started_at,
            config=str(self.config.source) if self.config.source else None,
            max_attempts=self.config.reconnect.max_attempts,
        )
        if notify:
            self.notifier.status(status_line(self.snapshot, self.clock()))

    # ------------------------------------------------------------------ starting

    def _start_gateway(self) -> None:
        """Adopt what answers on the port, refuse a stranger there, or spawn our own (via PortFree)."""
        self.gen += 1
        self.adopted = False
        self.extend_at = self.clock() if not self.ready_sent else None
        self._set_state(State.STARTING, f"checking port {self.config.gateway.port}")
        self.connector.probe(self.config, self.token, self.gen)

    def _spawn(self, message: PortFree) -> None:
        pid_ref: list[int] = []
        self.process = GatewayProcess(self.config, self.token, self.provider_env,
                                      functools.partial(self._post_exited, self.gen, pid_ref))
        try:
            pid = self.process.start()
        except SpawnError as exc:
            self.process = None
            self._fail(str(exc), exitcodes.CONFIG)
            return
        pid_ref.append(pid)
        self.spawned_at = self.clock()
        log.info("started gateway pid %d on port %d; waiting for its hello-ok (up to %.0fs)",
                 pid, self.config.gateway.port, self.config.gateway.start_timeout)
        self._set_state(State.STARTING, "waiting for hello-ok")
        self.connector.wait_ready(self.config, self.token, self.gen, self.config.gateway.start_timeout,
                                  self._process_alive, spawned=pid)

    def _post_exited(self, gen: int, pid_ref: list[int], info: ExitInfo) -> None:
        self.queue.put(ProcessExited(gen, pid_ref[0] if pid_ref else 0, info))

    def _process_alive(self) -> bool:
        process = self.process
        return process is not None and process.running

    def _on_connected(self, message: Connected) -> None:
        self.connection = message.connection
        self.adopted = message.adopted
        hello = message.hello
        self.version = hello.server_version
        now = self.clock()
        if self.state is State.STARTING or self.ready_at is None:
            self.ready_at = now
        self.connected_at = time.time()
        self.error = None
        self.extend_at = None
        self.health_failures = 0
        self.health_at = now + self.config.health.interval
        how = "adopted existing gateway" if self.adopted else f"gateway pid {self.process.pid if self.process else '?'}"
        took = f" {now - self.spawned_at:.2f}s after spawn" if self.spawned_at and not self.adopted else ""
        log.info("%s is ready on port %d (version %s, protocol %d)%s",
                 how, self.config.gateway.port, hello.server_version, hello.protocol, took)
        self.spawned_at = None
        first = not self.ready_sent
        self.ready_sent = True
        self._set_state(State.RUNNING, notify=not first)
        if first:
            self.notifier.ready(status_line(self.snapshot, now))

    def _on_connect_failed(self, message: ConnectFailed) -> None:
        if message.fatal:
            self._fail(message.error, message.exit_code)
            return
        if self.process is not None and self.process.running:
            self._replace(f"gateway did not answer a handshake: {message.error}")
        elif self.adopted and self.restart_at is None:
            self._schedule_restart(f"adopted gateway unreachable: {message.error}")
        # else: our process died; its ProcessExited (on the way, or already handled) decides what happens next

    # ------------------------------------------------------------------ running

    def _on_event(self, message: GatewayEventSeen) -> None:
        event = message.event
        if event.name == "shutdown":
            payload = event.payload if isinstance(event.payload, dict) else {}
            expected = payload.get("restartExpectedMs")
            self.post(GatewayShutdown(message.gen, str(payload.get("reason", "")),
                                      expected / 1000.0 if isinstance(expected, int | float) else None))
        elif event.name != "tick":
            log.debug("gateway event %s", event.name)

    def _on_shutdown(self, message: GatewayShutdown) -> None:
        if message.restart_expected is None:
            log.info("gateway announced shutdown (%s)", message.reason or "no reason given")
            return
        log.info("gateway is restarting itself (%s); waiting up to %.0fs for it instead of spawning another",
                 message.reason or "no reason given", message.restart_expected)
        self._reconnect(f"gateway restarting itself ({message.reason})",
                        message.restart_expected + self.config.gateway.start_timeout)

    def _on_link_lost(self, message: LinkLost) -> None:
        down = message.down
        what = f"close {down.code}" if down.code is not None else "no close frame"
        log.warning("lost the connection to the gateway on port %d (%s: %s); reconnecting",
                    self.config.gateway.port, what, down.reason or "no reason")
        health = self.config.health
        self._reconnect(f"link lost: {down.reason or what}", self.config.connection.handshake_timeout * health.failures)

    def _reconnect(self, cause: str, timeout: float) -> None:
        self._drop_connection()
        self._set_state(State.RECONNECTING, cause)
        alive = self._process_alive if not self.adopted else always
        spawned = self.process.pid if self.process is not None and self.process.running else None
        self.connector.wait_ready(self.config, self.token, self.gen, timeout, alive, self.adopted, spawned)

    def _check_health(self) -> None:
        connection = self.connection
        if self.state is not State.RUNNING or connection is None or self.health_busy:
            return
        self.health_busy = True
        threading.Thread(target=_health_probe, args=(connection, self.gen, self.config.health.timeout, self.post),
                         name="clawsvc-health", daemon=True).start()

    def _on_health(self, message: HealthChecked) -> None:
        if message.connection is not self.connection:
            return  # the answer (usually "connection lost") of a link we already dropped
        self.health_busy = False
        self.health_at = self.clock() + self.config.health.interval
        if message.ok:
            if self.health_failures:
                log.info("gateway health check ok again after %d failure(s)", self.health_failures)
            self.health_failures = 0
            return
        self.health_failures += 1
        limit = self.config.health.failures
        log.warning("gateway health check failed (%d/%d): %s", self.health_failures, limit, message.error)
        if self.health_failures < limit:
            return
        if self.adopted:
            self._reconnect(f"{limit} failed health checks", self.config.gateway.start_timeout)
        else:
            self._replace(f"{limit} consecutive failed health checks; last: {message.error}")

    def _replace(self, cause: str) -> None:
        """Stop a misbehaving owned gateway; its exit is then handled like a crash."""
        log.error("replacing gateway pid %s: %s", self.process.pid if self.process else "?", cause)
        self.error = self.replacing = cause
        self.connector.abort()
        self._drop_connection()
        self._set_state(State.RECONNECTING, cause)
        self._stop_process()

    # ------------------------------------------------------------------ exits and restarts

    def _on_exit(self, message: ProcessExited) -> None:
        info = message.info
        self.process = None
        self._drop_connection()
        self.connector.abort()
        ran = self.clock() - self.ready_at if self.ready_at is not None else 0.0
        self.last_exit = info.describe()
        if self.exiting:
            log.info("gateway pid %d %s", message.pid, self.last_exit)
            return
        self.ready_at = None
        if self.planned_restart:
            self.planned_restart = False
            self.replacing = None
            log.info("gateway pid %d %s; starting it again as asked", message.pid, self.last_exit)
            self.restarts += 1
            self._start_gateway()
            return
        if info.returncode == exitcodes.CONFIG:
            self._fail(f"gateway pid {message.pid} exited with status 78 (its configuration is unusable; "
                       "see its last log lines above)", exitcodes.CONFIG)
            return
        self.policy.ran_for(ran)
        why, self.replacing = self.replacing, None
        what = f"gateway pid {message.pid} replaced ({why})" if why else f"gateway pid {message.pid} {self.last_exit}"
        self._schedule_restart(what)

    def _schedule_restart(self, cause: str) -> None:
        delay = self.policy.failure()
        limit = self.config.reconnect.max_attempts
        if delay is None:
            self._fail(f"{cause}; gave up after {limit} attempts in a row", exitcodes.FAIL)
            return
        self.restarts += 1
        log.warning("%s; restarting in %.1fs (attempt %d/%s)", cause, delay, self.policy.attempts, limit or "∞")
        self.restart_at = self.clock() + delay
        self._set_state(State.RECONNECTING, cause)

    def _on_restart_requested(self, message: RestartRequested) -> None:
        log.info("gateway restart requested (%s)", message.reason)
        self.restart_at = None
        if self.process is None:  # adopted, or between a crash and its scheduled restart
            self.restarts += 1
            self._drop_connection()
            self._start_gateway()
            return
        self.planned_restart = True
        self.connector.abort()
        self._drop_connection()
        self._set_state(State.STARTING, f"restarting gateway ({message.reason})")
        self._stop_process()

    def _fail(self, error: str, code: int) -> None:
        """A problem retrying cannot fix: stop, and exit so systemd's Restart=/start limits decide."""
        log.error("%s; stopping clawsvc (exit %d)", error, code)
        self.error = error
        self.exit_code = code
        self._set_state(State.ERROR, error)
        self._shutdown()

    # ------------------------------------------------------------------ stopping, signals, reload

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self._reload()
        elif not self.exiting:
            log.info("received %s; stopping%s", signal.Signals(signum).name,
                     " the gateway" if self.process else "")
            self.notifier.stopping()
            self._set_state(State.STOPPING)
            self._shutdown()

    def _shutdown(self) -> None:
        self.exiting = True
        self.restart_at = self.health_at = self.extend_at = None
        self.connector.abort()
        self._drop_connection()
        self._stop_process()

    def _stop_process(self) -> None:
        if self.process is not None:
            stopper = threading.Thread(target=self.process.stop, name="clawsvc-stopper", daemon=True)
            stopper.start()
            self.stoppers = [*(thread for thread in self.stoppers if thread.is_alive()), stopper]

    def _wait_for_stops(self) -> None:
        """The gateway's exit is reported before its helpers are ended: wait for that too, so none outlives us."""
        bound = stop_bound(self.config)
        deadline = time.monotonic() + bound
        for stopper in self.stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        swept = leftovers.wait_sweeps(max(0.0, deadline - time.monotonic()))
        if not swept or any(stopper.is_alive() for stopper in self.stoppers):
            log.error("gateway helper processes were still being stopped %.0fs after the gateway exited; "
                      "exiting anyway, some may outlive clawsvc", bound)

    def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        self.health_busy = False
        self.health_at = None
        if connection is not None:
            _close_in_background(connection)

    def _reload(self) -> None:
        """Whatever goes wrong while reading the new config, the old one stays: one error line, and STATUS says so."""
        if self.ready_sent:  # before READY=1 systemd is still waiting for the start, not for a reload
            self.notifier.reloading()
        try:
            new = load_config(self.config.source)
            preflight(new)  # what `run` and `check-config` check, so a reload accepts no more than a start
            changed = gateway_affecting(self.config, new)
            # read again every time: a rotated token file or a key stored with `clawsvc keys set` must reach
            # the gateway on `systemctl reload` even when the YAML did not change
            token, provider_env = self.secrets(new) if not self.exiting else (self.token, self.provider_env)
            if (token, dict(provider_env)) != (self.token, dict(self.provider_env)):
                changed.append("the gateway token or provider keys")
        except Exception as exc:  # a reload must never take the running service down
            expected = isinstance(exc, ConfigError | SecretError | OSError)
            problem = str(exc) if expected else f"unexpected {exc.__class__.__name__}: {exc}"
            problem = cut(problem, 300)
            log.error("reload failed, still running on the previous config: %s", problem)
            self._reload_done(f"{status_line(self.snapshot, self.clock())} (reload failed: {problem})")
            return
        old, self.config = self.config, new
        set_level(new.logging.level)
        self.policy.reconfigure(new.reconnect)
        if self.on_reload is not None:
            self.on_reload(old, new)
        if changed and not self.exiting:
            self.token, self.provider_env = token, provider_env
            log.info("reloaded %s; %s changed, restarting the gateway", new.source, ", ".join(changed))
            self.post(RestartRequested(f"config reload changed {', '.join(changed)}"))
        else:
            log.info("reloaded %s; no gateway restart needed", new.source)
        self._publish(notify=False)
        self._reload_done(status_line(self.snapshot, self.clock()))

    def _reload_done(self, status: str) -> None:
        """Close the RELOADING=1 cycle; before the first hello-ok there is no readiness to re-announce."""
        if self.ready_sent:
            self.notifier.ready(status)
        else:
            self.notifier.status(status)

    # ------------------------------------------------------------------ control socket (called from its threads)

    def status(self) -> dict[str, Any]:
        return self.snapshot.to_dict(self.clock())

    def rpc(self, method: str, params: Any, timeout: float | None) -> Any:
        connection = self.connection
        if connection is None:
            raise GatewayError("UNAVAILABLE", f"gateway is not connected (state: {self.state.value})")
        return connection.rpc(method, params, timeout=timeout)

    def restart_gateway(self) -> dict[str, Any]:
        if self.adopted:
            raise GatewayError("NOT_OWNED", "the gateway was adopted, not started by clawsvc; restart it where "
                                            "it was started")
        self.post(RestartRequested("asked over the control socket"))
        return {"restarting": True}


def _close_in_background(connection: GatewayConnection) -> None:
    """close() waits up to ~0.75 s for the gateway to answer the close frame: never on the loop.
    A link we dropped on purpose reports nothing more: no LinkLost, no late events."""
    connection.on_down = connection.on_event = None
    threading.Thread(target=connection.close, name="clawsvc-closer", daemon=True).start()


def _health_probe(connection: GatewayConnection, gen: int, timeout: float,
                  post: Callable[[Message], None]) -> None:
    try:
        connection.rpc("health", None, timeout=timeout)
    except Exception as exc:  # any failure is a failed check; the loop decides
        post(HealthChecked(gen, False, describe_error(exc), connection))
    else:
        post(HealthChecked(gen, True, None, connection))
