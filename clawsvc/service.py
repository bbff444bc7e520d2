"""`clawsvc run`: wire config, secrets, sd_notify, the control socket and signals to the supervisor loop."""

from __future__ import annotations

import argparse
import functools
import logging
import queue
import signal
from collections.abc import Mapping
from types import FrameType

from clawsvc import __version__, exitcodes
from clawsvc.config import Config, ConfigError, load_config
from clawsvc.control import ControlServer
from clawsvc.events import Message, SignalReceived
from clawsvc.logs import set_level, setup_logging
from clawsvc.notify import Notifier
from clawsvc.secrets import SecretError, load_all
from clawsvc.supervisor import Supervisor

log = logging.getLogger("clawsvc")
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def load_secrets(config: Config) -> tuple[str, Mapping[str, str]]:
    token, source, provider_env = load_all(config)
    log.info("gateway token from %s", source)
    return token, provider_env


def _on_signal(inbox: queue.SimpleQueue[Message], signum: int, frame: FrameType | None) -> None:
    inbox.put(SignalReceived(signum))


class ControlSocket:
    """Keeps the control server following control.socket / control.group across reloads."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.server: ControlServer | None = None

    def open(self, config: Config) -> None:
        self.server = ControlServer(config.control.socket, self.supervisor, config.control.group)
        self.server.start()

    def reload(self, old: Config, new: Config) -> None:
        if old.control == new.control:
            return
        self.close()
        try:
            self.open(new)
        except Exception as exc:  # a reload must not kill a running service
            log.error("control socket %s could not be opened after reload: %s; `clawsvc status` will not work "
                      "until the next successful reload", new.control.socket, exc)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


def main(args: argparse.Namespace) -> int:
    setup_logging("info")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("invalid config, not starting: %s", exc)
        return exitcodes.CONFIG
    set_level(config.logging.level)
    log.info("clawsvc %s starting with %s", __version__, config.source or "built-in defaults (no config file)")
    try:
        supervisor = Supervisor(config, load_secrets, Notifier())
    except SecretError as exc:
        log.error("cannot load secrets, not starting: %s", exc)
        return exitcodes.CONFIG
    control = ControlSocket(supervisor)
    try:
        control.open(config)
    except Exception as exc:
        log.error("cannot open the control socket %s: %s", config.control.socket, exc)
        return exitcodes.FAIL
    supervisor.on_reload = control.reload
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, functools.partial(_on_signal, supervisor.queue))
    try:
        code = supervisor.run()
    finally:
        control.close()
    log.info("clawsvc stopped (exit %d)", code)
    return code
