"""Alert hooks (`alerts:`): clawsvc's own events handed to a command (as the service user, the event JSON on stdin,
bounded) or a webhook (webhook.py). The loop only offers each event (Hooks.offer: a dict lookup and a little
arithmetic); a hook runs on a thread of its own, at most one run per hook at a time and per min_interval. What comes
meanwhile is held back and counted: the next run's JSON says how many, and the metrics keep the totals. A failing
hook is logged once per min_interval.

`fire` runs the hooks of one event at once, in the calling process: `clawsvc alert` (the units' OnFailure=) and
`clawsvc upgrade` (a rollback) use it."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clawsvc import jsontext
from clawsvc.boundedrun import Account, Unfinished, run_bounded
from clawsvc.config import AlertHook, Config, ConfigError
from clawsvc.service import catalogue
from clawsvc.service.events import Event, iso_time
from clawsvc.service.metrics import Counts, instance_of
from clawsvc.service.webhook import HookFailed, post
from clawsvc.text import cut, printable
from clawsvc.threads import start_thread
from clawsvc.users import service_uid

log = logging.getLogger("clawsvc.alerts")
OUTPUT_CAP = 4096  # bytes of a command's output kept (its last line is logged when it fails)
PAYLOAD_MAX = 60 * 1024  # bytes of an event's JSON a hook gets (clawsvc's own events are far smaller)
TEXT_MAX = 2000  # characters of its readable line, which repeats the payload's text (a chat shows it as is)
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def check_names(config: Config) -> None:
    """Every `on:` name is one of clawsvc's own events a hook can be told (catalogue.HOOKABLE); ConfigError naming
    file:line, the hook and the name otherwise."""
    for index, hook in enumerate(config.alerts):
        for name in hook.on:
            if name in catalogue.HOOKABLE:
                continue
            why = ("is the gateway's: it can carry chat content, and never goes to a hook (follow it with "
                   "`clawsvc events --follow`)" if name in catalogue.GATEWAY else "is no event of clawsvc's")
            raise ConfigError(f"{config.source or '<config>'}:{hook.line}: alerts[{index}].on: {name!r} {why}; "
                              f"hooks take: {', '.join(sorted(catalogue.HOOKABLE))}")


def message(event: Event, held_back: int, config: Config) -> bytes:
    """The JSON a hook gets: the event as `clawsvc events --json` prints it, with a readable `text` (a chat
    webhook shows it as is), the host, the instance and how many events this hook was not run for since its last
    run."""
    instance = instance_of(config.source)
    host = socket.gethostname()
    said = cut(catalogue.text(event.name, event.payload) or event.name, TEXT_MAX)
    where = f"{host} ({instance})" if instance else host
    data = {"time": iso_time(event.time), "source": event.source, "name": event.name, "payload": event.payload,
            "text": f"clawsvc on {where}: {event.name}: {said}", "host": host, "instance": instance,
            "held_back": held_back}
    encoded = jsontext.dumps(data)
    if len(encoded) > PAYLOAD_MAX:
        data["payload"] = {"truncated": True, "bytes": len(encoded)}
        encoded = jsontext.dumps(data)
    return bytes(encoded)


def _account() -> Account | None:
    """Who a command hook runs as: the service user. Run by root (`clawsvc upgrade`, a `clawsvc run` of root's) that
    is the clawsvc user where it exists; anyone else (and root on a machine without it) runs hooks as itself."""
    uid = service_uid() if os.geteuid() == 0 else None
    return None if uid is None else Account.of(uid)


def run_hook(hook: AlertHook, data: bytes, name: str) -> None:
    """One run of a hook; HookFailed (one line) when it did not take the event."""
    if hook.webhook is not None:
        post(hook.webhook, data, hook.timeout, hook.headers_file)
        return
    assert hook.command is not None
    env = {"PATH": HOOK_PATH, "LANG": "C.UTF-8", "CLAWSVC_EVENT": name}
    try:
        done = run_bounded(hook.command, env=env, timeout=hook.timeout, cap=OUTPUT_CAP, account=_account(),
                           stdin=data)
    except Unfinished as exc:
        raise HookFailed(str(exc)) from None
    if done.returncode != 0:
        lines = done.output.decode("utf-8", "replace").strip().splitlines()
        said = f": {printable(cut(lines[-1], 200))}" if lines else ""
        raise HookFailed(f"{hook.command[0]} exited with status {done.returncode}{said}")


def fire(config: Config, event: Event) -> list[str]:
    """Run every hook of `event` now, one after the other (no rate limit: a process of its own); the failures."""
    failures = []
    for index, hook in enumerate(config.alerts, 1):
        if event.name not in hook.on:
            continue
        try:
            run_hook(hook, message(event, 0, config), event.name)
        except HookFailed as exc:
            failures.append(f"alert hook {index} ({hook.target}): {exc}")
    return failures


@dataclass
class Gate:
    """One hook's rate limit, without a clock of its own: `offer(now)` says whether to run now and with how many
    events held back since the last run; `done()` when that run is over."""
    interval: float
    last: float | None = None
    busy: bool = False
    held: int = 0
    held_total: int = 0
    sent: int = 0
    failed: int = 0
    failure_logged: float | None = None
    failures_unlogged: int = 0

    def offer(self, now: float) -> int | None:
        if self.busy or (self.last is not None and now - self.last < self.interval):
            self.held += 1
            self.held_total += 1
            return None
        held, self.held, self.last, self.busy = self.held, 0, now, True
        self.sent += 1
        return held

    def failure(self, now: float) -> int | None:
        """Count a failed run; None to stay quiet, else log it now with this many unlogged failures before it."""
        self.failed += 1
        if self.failure_logged is not None and now - self.failure_logged < self.interval:
            self.failures_unlogged += 1
            return None
        unlogged, self.failures_unlogged, self.failure_logged = self.failures_unlogged, 0, now
        return unlogged


class Hooks:
    """The service's alert hooks: offered every event the executor publishes; `update` on a reload."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic,
                 runner: Callable[[AlertHook, bytes, str], None] = run_hook) -> None:
        self._clock = clock
        self._runner = runner
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._config = config
        self._gates: list[Gate] = [Gate(hook.min_interval) for hook in config.alerts]
        self._names = frozenset(name for hook in config.alerts for name in hook.on)

    def update(self, config: Config) -> None:
        """A reloaded config: hooks that did not change keep their rate limit and counts."""
        with self._lock:
            old = dict(zip(self._config.alerts, self._gates, strict=True))
            self._gates = [old.get(hook) or Gate(hook.min_interval) for hook in config.alerts]
            self._config = config
            self._names = frozenset(name for hook in config.alerts for name in hook.on)

    def offer(self, event: Event) -> None:
        if event.name not in self._names or event.source != "service":
            return
        now = self._clock()
        with self._lock:
            config, runs = self._config, []
            for number, (hook, gate) in enumerate(zip(config.alerts, self._gates, strict=True), 1):
                if event.name in hook.on:
                    held = gate.offer(now)
                    if held is None:
                        log.debug("alert hook %d (%s): %s held back (min_interval %gs, or still running)", number,
                                  hook.target, event.name, hook.min_interval)
                    else:
                        runs.append((number, hook, gate, held))
        for number, hook, gate, held in runs:
            try:
                start_thread("alert", self._run, number, hook, gate, message(event, held, config), event.name)
            except RuntimeError:
                self._finished(number, hook, gate, "cannot start a thread for it")

    def _run(self, number: int, hook: AlertHook, gate: Gate, data: bytes, name: str) -> None:
        try:
            self._runner(hook, data, name)
        except HookFailed as exc:
            self._finished(number, hook, gate, str(exc))
        except Exception as exc:  # a bug must not leave the hook busy for ever
            log.exception("alert hook %d (%s) failed unexpectedly", number, hook.target)
            self._finished(number, hook, gate, exc.__class__.__name__)
        else:
            self._finished(number, hook, gate, None)

    def _finished(self, number: int, hook: AlertHook, gate: Gate, problem: str | None) -> None:
        """The run is over: its failure counted (and logged, if due), then the hook is free again."""
        with self._lock:
            unlogged = gate.failure(self._clock()) if problem is not None else None
        if unlogged is not None:
            more = f" ({unlogged} more failure(s) since the last warning)" if unlogged else ""
            log.warning("alert hook %d (%s) failed: %s%s; next warning about it in %gs at the earliest", number,
                        hook.target, problem, more, hook.min_interval)
        with self._lock:
            gate.busy = False
            self._idle.notify_all()

    def counts(self, events_missed: int) -> Counts:
        with self._lock:
            numbered = list(enumerate(self._gates, 1))
            return Counts(events_missed, {str(n): g.sent for n, g in numbered},
                          {str(n): g.held_total for n, g in numbered}, {str(n): g.failed for n, g in numbered})

    def wait(self, timeout: float) -> bool:
        """Wait (bounded) for the runs in progress, e.g. the `error` event's when clawsvc gives up."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while any(gate.busy for gate in self._gates):
                if not self._idle.wait(max(0.0, deadline - time.monotonic())):
                    return False
            return True


def hook_names(hooks: Sequence[AlertHook]) -> str:
    return ", ".join(f"{n} ({hook.target}: {', '.join(hook.on)})" for n, hook in enumerate(hooks, 1))

