"""`clawsvc run`: wire config, secrets, sd_notify, the control socket and signals to the supervisor loop."""

from __future__ import annotations

import argparse
import functools
import logging
import queue
import signal
from collections.abc import Mapping
from types import FrameType

from clawsvc import __version__, exitcodes, threads
from clawsvc.config import Config, ConfigError, load_config
from clawsvc.control.server import ControlServer
from clawsvc.gateway import proctree
from clawsvc.logs import set_level, setup_logging
from clawsvc.secrets import SecretError, load_all
from clawsvc.service.exposition import Outputs
from clawsvc.service.loop import Supervisor
from clawsvc.service.messages import Message, SignalReceived
from clawsvc.service.notify import Notifier
from clawsvc.service.preflight import preflight

log = logging.getLogger("clawsvc")
THREADS_GRACE = 5.0  # at exit, how long to wait in all for the threads still finishing (closes, stops)
HOOKS_GRACE = 15.0  # ... and first for alert hooks still running (the `error` event's, when clawsvc gives up)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def load_secrets(config: Config) -> tuple[str, Mapping[str, str]]:
    token, source, provider_env = load_all(config)
    log.info("gateway token from %s", source)
    return token, provider_env


def _on_signal(inbox: queue.SimpleQueue[Message], signum: int, frame: FrameType | None) -> None:
    inbox.put(SignalReceived(signum))


class Reapply:
    """What follows the config in place on a reload: the control socket, then the metrics outputs."""

    def __init__(self, control: ControlSocket, outputs: Outputs) -> None:
        self.control = control
        self.outputs = outputs

    def __call__(self, old: Config, new: Config) -> None:
        self.control.reload(old, new)
        self.outputs.reload(old, new)


class ControlSocket:
    """Keeps the control server following control.socket / control.group across reloads."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.server: ControlServer | None = None

    def open(self, config: Config) -> None:
        self.server = ControlServer(config.control.socket, self.supervisor, config.control.group)
        self.server.start()

    def reload(self, old: Config, new: Config) -> None:
        """Never raises: a reload must not kill a running service."""
        if old.control == new.control:
            return
        try:
            self.close()
            self.open(new)
        except Exception as exc:
            log.error("control socket %s could not be opened after reload: %s; `clawsvc status` will not work "
                      "until the next successful reload", new.control.socket, exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def _refuse(notifier: Notifier, message: str, problem: str) -> int:
    """Exit 78 with one line in the log and the reason on `systemctl status`."""
    log.error("%s: %s", message, problem)
    notifier.status(f"error: {problem}")
    return exitcodes.CONFIG


def _machinery(config: Config, notifier: Notifier,
               first_secrets: tuple[str, Mapping[str, str]]) -> tuple[Supervisor, ControlSocket, Outputs]:
    """The supervisor, its signal handlers, its open control socket and metrics outputs; any failure is logged here,
    then raised (the metrics outputs only log theirs)."""
    try:
        supervisor = Supervisor(config, load_secrets, notifier, first_secrets=first_secrets)
    except Exception:
        log.exception("cannot set up the supervisor (a bug or a broken install); stopping")
        raise
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, functools.partial(_on_signal, supervisor.queue))
    control = ControlSocket(supervisor)
    try:
        control.open(config)
    except Exception as exc:
        log.error("cannot open the control socket %s: %s", config.control.socket, exc)
        raise
    outputs = Outputs(supervisor.metrics)
    outputs.open(config)
    supervisor.executor.on_change = outputs.changed
    supervisor.on_reload = Reapply(control, outputs)
    return supervisor, control, outputs


def main(args: argparse.Namespace) -> int:
    setup_logging("info")
    notifier = Notifier()
    try:
        config = load_config(args.config)
        preflight(config)  # the very checks `clawsvc check-config` runs
    except ConfigError as exc:
        return _refuse(notifier, "invalid config, not starting", str(exc))
    set_level(config.logging.level)
    log.info("clawsvc %s starting with %s", __version__, config.source or "built-in defaults (no config file)")
    proctree.become_subreaper()  # what the gateway's processes orphan is ours to end and reap, not init's
    try:
        first_secrets = load_secrets(config)
    except (SecretError, ConfigError) as exc:
        return _refuse(notifier, "cannot load secrets, not starting", str(exc))
    try:
        supervisor, control, outputs = _machinery(config, notifier, first_secrets)
    except Exception:
        return exitcodes.FAIL
    try:
        code = supervisor.run()
    finally:
        control.close()
        outputs.close()
    if not supervisor.executor.hooks.wait(HOOKS_GRACE):
        log.warning("alert hooks still running %.0fs after the service stopped; exiting without them", HOOKS_GRACE)
    if lingering := threads.join_all(THREADS_GRACE):
        log.debug("threads still running at exit: %s", ", ".join(lingering))
    log.info("clawsvc stopped (exit %d)", code)
    return code
