"""The first gateway's head start: `clawsvc run` spawns it as soon as the config, the checks and the secrets
are in, before the supervisor's machinery (machine, loop, executor, control socket, connection stack) is even
imported. The machine still decides: its first Probe is answered with PortFree and its first Spawn with this
process, exactly as if the executor had probed and spawned then. When the port is already taken (adopting, or a
stranger to name), or the spawn cannot be made, there is no head start and the machine does it all as usual."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from clawsvc.config import Config
from clawsvc.gateway.exits import ExitInfo
from clawsvc.gateway.ports import port_in_use
from clawsvc.gateway.process import GatewayProcess


class ExitRelay:
    """The process's on_exit until the executor claims it: an exit before that is held, then handed over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: Callable[[ExitInfo], None] | None = None
        self._held: ExitInfo | None = None

    def __call__(self, info: ExitInfo) -> None:
        with self._lock:
            target = self._target
            if target is None:
                self._held = info
                return
        target(info)

    def attach(self, target: Callable[[ExitInfo], None]) -> None:
        with self._lock:
            self._target = target
            held, self._held = self._held, None
        if held is not None:
            target(held)


class HeadStart:
    """A spawned first gateway waiting to be claimed by the executor (or stopped if it never is)."""

    def __init__(self, process: GatewayProcess, pid: int, relay: ExitRelay) -> None:
        self.process = process
        self.pid = pid
        self.relay = relay
        self.claimed = False

    def discard(self) -> None:
        """Nothing will supervise it (clawsvc is leaving before its loop ran): stop it, bounded."""
        if not self.claimed:
            self.claimed = True
            self.process.stop()


def begin(config: Config, token: str, provider_env: Mapping[str, str]) -> HeadStart | None:
    """Spawn the first gateway now when its port is free; None leaves probing and spawning to the machine."""
    if port_in_use(config.gateway.port):
        return None
    relay = ExitRelay()
    process = GatewayProcess(config, token, provider_env, relay)
    try:
        pid = process.start()
    except Exception:  # SpawnError or a surprise: the machine's own Spawn meets it again and reports it as usual
        return None
    return HeadStart(process, pid, relay)
