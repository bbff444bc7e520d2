"""Carries out the state machine's effects, never blocking the loop: whatever can take time (a spawn with its
`node --version`, a handshake, a reload with the keyring child, a health RPC, a stop, a close) runs on a thread
from clawsvc.threads and reports back as a message. Owns the gateway processes (by pid), the connections (by
link id), the connector and the notifier."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawsvc.config import Config, ConfigError, load_config
from clawsvc.gateway import leftovers
from clawsvc.gateway.dashboard import Dashboard
from clawsvc.gateway.process import GatewayProcess, SpawnError, stop_bound
from clawsvc.gateway.protocol import GatewayError
from clawsvc.logs import set_level
from clawsvc.secrets import SecretError
from clawsvc.service import metrics, workers
from clawsvc.service.alerts import Hooks, hook_names
from clawsvc.service.connector import Connector, always
from clawsvc.service.effects import (
    AbortConnect,
    ApplyConfig,
    AskRestart,
    CheckHealth,
    CloseLink,
    Connect,
    ConsumeHandoff,
    Effect,
    Emit,
    LoadConfig,
    Log,
    Notify,
    NotifyKind,
    Probe,
    Publish,
    Reply,
    Spawn,
    StopProcess,
)
from clawsvc.service.eventhub import EventHub
from clawsvc.service.events import Event
from clawsvc.service.messages import (
    ConfigFailed,
    ConfigLoaded,
    DrainNoticed,
    ExitInfo,
    Message,
    ProcessExited,
    Spawned,
    SpawnFailed,
)
from clawsvc.service.notify import Notifier
from clawsvc.service.preflight import preflight
from clawsvc.service.status import Snapshot, status_line
from clawsvc.text import cut
from clawsvc.threads import start_thread

if TYPE_CHECKING:
    from clawsvc.gateway.connection import GatewayConnection

log = logging.getLogger("clawsvc.supervisor")
Secrets = Callable[[Config], tuple[str, Mapping[str, str]]]
Post = Callable[[Message], None]
PROBLEM_MAX = 300  # characters of a reload problem on the STATUS= line


class Executor:
    def __init__(self, post: Post, notifier: Notifier, secrets: Secrets, clock: Callable[[], float],
                 config: Config) -> None:
        self.post = post
        self.notifier = notifier
        self.secrets = secrets
        self.clock = clock
        self.connector = Connector(post, self._register)
        self.on_reload: Callable[[Config, Config], None] | None = None
        self.on_change: Callable[[], None] | None = None  # the published view or a count changed (the textfile)
        self.snapshot = Snapshot.empty(config, os.getpid(), clock())
        self.events = EventHub()
        self.hooks = Hooks(config, clock)
        if config.alerts:
            log.info("alert hooks: %s", hook_names(config.alerts))
        self.dashboard = Dashboard()  # Control UI links for the gateway of the latest Connect
        self._lock = threading.Lock()  # guards the three below: control threads read them
        self._processes: dict[int, GatewayProcess] = {}
        self._links: dict[int, GatewayConnection] = {}
        self._current: GatewayConnection | None = None
        self._reload_lock = threading.Lock()  # one control-socket reopen at a time
        self._epoch: tuple[float, float] | None = None  # (monotonic, wall) of the last connect
        self._stoppers: list[threading.Thread] = []  # only the loop thread touches it

    def run(self, effects: list[Effect]) -> None:
        for effect in effects:
            self.carry_out(effect)

    def carry_out(self, effect: Effect) -> None:
        match effect:
            case Log():
                log.log(effect.level, "%s", effect.text)
            case Emit():  # payloads may hold chat content: never logged
                event = Event(time.time(), effect.source, effect.name, effect.payload, effect.seq)
                self.events.publish(event)
                if effect.source == "service":
                    self.hooks.offer(event)
                    self._changed()
            case Publish():
                self._publish(effect.view)
                self._changed()
            case Notify():
                self._notify(effect)
            case Probe():
                self.connector.probe(effect.gen, effect.port)
            case Spawn():
                start_thread("spawn", self._spawn, effect)
            case Connect():
                self._connect(effect)
            case AbortConnect():
                self.connector.abort()
            case CloseLink():
                self._close_link(effect.link)
            case StopProcess():
                self._stop(effect.pid, effect.grace)
            case AskRestart():
                self._on_link("restart", workers.ask_restart, effect)
            case ConsumeHandoff():
                start_thread("handoff", workers.consume_handoff, self.post, effect)
            case CheckHealth():
                self._on_link("health", workers.check_health, effect)
            case LoadConfig():
                start_thread("reload", self._load_config, effect.path)
            case ApplyConfig():
                self._apply(effect.old, effect.new)
            case Reply():
                _reply(effect)

    # ------------------------------------------------------------------ status and systemd

    def _publish(self, view: Snapshot) -> None:
        connected = view.connected_mono
        if connected is not None and (self._epoch is None or self._epoch[0] != connected):
            self._epoch = (connected, time.time() - (self.clock() - connected))
        epoch = self._epoch[1] if connected is not None and self._epoch else None
        self.snapshot = dataclasses.replace(view, connected_at=epoch, service_pid=os.getpid())
        with self._lock:
            self._current = self._links.get(view.link) if view.link is not None else None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def metrics_text(self) -> str:
        """The Prometheus exposition of the published state (any thread)."""
        return metrics.render(self.snapshot, self.clock(), time.time(), self.hooks.counts(self.events.missed()))

    def _notify(self, effect: Notify) -> None:
        if effect.kind in (NotifyKind.READY, NotifyKind.STATUS):
            line = status_line(self.snapshot, self.clock()) + effect.suffix
            (self.notifier.ready if effect.kind is NotifyKind.READY else self.notifier.status)(line)
        elif effect.kind is NotifyKind.EXTEND_TIMEOUT:
            self.notifier.extend_timeout(effect.seconds or 0.0)
        else:
            {NotifyKind.RELOADING: self.notifier.reloading, NotifyKind.STOPPING: self.notifier.stopping,
             NotifyKind.WATCHDOG: self.notifier.watchdog}[effect.kind]()

    # ------------------------------------------------------------------ the gateway process

    def _spawn(self, effect: Spawn) -> None:
        """Worker: check the command (node --version), end leftovers, fork; then report Spawned or SpawnFailed."""
        announced = threading.Event()
        pid_box: list[int] = []
        process = GatewayProcess(effect.config, effect.token, effect.provider_env,
                                 functools.partial(self._exited, effect.gen, pid_box, announced),
                                 functools.partial(self._drain_noticed, effect.gen))
        try:
            pid = process.start()
        except SpawnError as exc:
            self.post(SpawnFailed(effect.gen, str(exc)))
            return
        except Exception as exc:  # never leave the loop waiting for a spawn that is not coming
            log.exception("starting the gateway failed unexpectedly")
            self.post(SpawnFailed(effect.gen, f"cannot start the gateway: unexpected {exc.__class__.__name__}"))
            return
        pid_box.append(pid)
        self._report_spawned(effect.gen, pid, process)
        announced.set()

    def _report_spawned(self, gen: int, pid: int, process: GatewayProcess) -> None:
        with self._lock:
            self._processes[pid] = process
        self.post(Spawned(gen, pid))

    def _exited(self, gen: int, pid_box: list[int], announced: threading.Event, info: ExitInfo) -> None:
        announced.wait()  # Spawned reaches the loop before this exit does
        pid = pid_box[0] if pid_box else 0
        with self._lock:
            self._processes.pop(pid, None)
        self.post(ProcessExited(gen, pid, info))

    def _drain_noticed(self, gen: int, activity: str) -> None:
        self.post(DrainNoticed(gen, activity))

    def _alive(self, pid: int) -> bool:
        with self._lock:
            process = self._processes.get(pid)
        return process is not None and process.running

    def _stop(self, pid: int, grace: float | None) -> None:
        with self._lock:
            process = self._processes.get(pid)
        if process is not None:
            self._stoppers = [*(t for t in self._stoppers if t.is_alive()),
                              start_thread("stopper", process.stop, grace)]

    # ------------------------------------------------------------------ connections

    def _connect(self, effect: Connect) -> None:
        self.dashboard.note(effect.config, effect.token)
        alive = always if effect.adopting or effect.spawned is None else functools.partial(self._alive, effect.spawned)
        self.connector.wait_ready(effect.config, effect.token, effect.gen, effect.timeout, alive, effect.adopting,
                                  effect.spawned, effect.stranger)

    def _register(self, link: int, connection: GatewayConnection) -> None:
        with self._lock:
            self._links[link] = connection

    def _close_link(self, link: int) -> None:
        """close() waits up to ~0.75 s for the gateway to answer the close frame: never on the loop.
        A link closed on purpose reports nothing more: no LinkLost, no late events."""
        with self._lock:
            connection = self._links.pop(link, None)
            if connection is not None and connection is self._current:
                self._current = None
        if connection is not None:
            connection.on_down = connection.on_event = None
            start_thread("closer", connection.close)

    def _on_link(self, role: str, work: Callable[[Post, GatewayConnection | None, Any], None],
                 effect: CheckHealth | AskRestart) -> None:
        """`work(post, connection, effect)` on a thread of its own, with effect.link's connection (None: closed)."""
        with self._lock:
            connection = self._links.get(effect.link)
        start_thread(role, work, self.post, connection, effect)

    def rpc(self, method: str, params: Any, timeout: float | None) -> Any:
        with self._lock:
            connection = self._current
        if connection is None:
            raise GatewayError("UNAVAILABLE", f"gateway is not connected (state: {self.snapshot.state.value})")
        return connection.rpc(method, params, timeout=timeout)

    def close(self, config: Config) -> None:
        """The loop is over: end any handshake, close what is still open, and wait (bounded) until the stops
        and the sweeps of what the gateways left behind are done, so that nothing outlives clawsvc."""
        self.connector.abort()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._close_link(link)
        bound = stop_bound(config)
        deadline = time.monotonic() + bound
        for stopper in self._stoppers:
            stopper.join(max(0.0, deadline - time.monotonic()))
        swept = leftovers.wait_sweeps(max(0.0, deadline - time.monotonic()))
        if not swept or any(stopper.is_alive() for stopper in self._stoppers):
            log.error("gateway helper processes were still being stopped %.0fs after the gateway exited; "
                      "exiting anyway, some may outlive clawsvc", bound)

    # ------------------------------------------------------------------ reload

    def _load_config(self, path: Path | None) -> None:
        """Worker: what `run` and `check-config` check, so a reload accepts no more than a start; secrets are
        read again every time (a rotated token file must reach the gateway even when the YAML did not change)."""
        try:
            new = load_config(path)
            preflight(new)
            token, provider_env = self.secrets(new)
        except Exception as exc:  # a reload must never take the running service down
            expected = isinstance(exc, ConfigError | SecretError | OSError)
            problem = str(exc) if expected else f"unexpected {exc.__class__.__name__}: {exc}"
            self.post(ConfigFailed(cut(problem, PROBLEM_MAX)))
            return
        self.post(ConfigLoaded(new, token, provider_env))

    def _apply(self, old: Config, new: Config) -> None:
        set_level(new.logging.level)
        self.hooks.update(new)
        if new.alerts != old.alerts:
            log.info("alert hooks: %s", hook_names(new.alerts) or "none")
        if self.on_reload is not None:
            start_thread("reapply", self._reapply, self.on_reload, old, new)

    def _reapply(self, on_reload: Callable[[Config, Config], None], old: Config, new: Config) -> None:
        with self._reload_lock:
            on_reload(old, new)


def _reply(effect: Reply) -> None:
    future = effect.handle
    if not isinstance(future, Future) or future.done():
        return
    if effect.error is not None:
        future.set_exception(GatewayError(*effect.error))
    else:
        future.set_result(dict(effect.result or {}))
