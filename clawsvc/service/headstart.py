"""The first gateway's head start: `clawsvc run` spawns it as soon as the config, the checks and the secrets
are in, before the supervisor's machinery (machine, loop, executor, control socket, connection stack) is even
imported. The machine still decides: its first Probe is answered with PortFree and its first Spawn with this
process, exactly as if the executor had probed and spawned then. When the port is already taken (adopting, or a
stranger to name), or the spawn cannot be made, there is no head start and the machine does it all as usual."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence

from clawsvc.config import Config
from clawsvc.gateway.compile_cache import compile_cache_dir
from clawsvc.gateway.exits import ExitInfo
from clawsvc.gateway.ports import port_in_use
from clawsvc.gateway.process import GatewayProcess, state_dir
from clawsvc.secretrule import is_secret_name
from clawsvc.secrets.tokens import GENERATED_TOKEN_NAME
from clawsvc.service import startplan
from clawsvc.service.earlyspawn import EarlyGateway

log = logging.getLogger("clawsvc")


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

    def __init__(self, process: GatewayProcess, pid: int, relay: ExitRelay, from_plan: bool = False) -> None:
        self.process = process
        self.pid = pid
        self.relay = relay
        self.from_plan = from_plan  # the start plan's early gateway, adopted
        self.claimed = False

    def discard(self) -> None:
        """Nothing will supervise it (clawsvc is leaving before its loop ran): stop it, bounded."""
        if not self.claimed:
            self.claimed = True
            self.process.stop()


def begin(config: Config, token: str, provider_env: Mapping[str, str],
          early: EarlyGateway | None = None) -> HeadStart | None:
    """Spawn the first gateway now when its port is free, or adopt `early` when it is exactly that gateway; None
    leaves probing and spawning to the machine (and `early` discarded)."""
    if early is None and port_in_use(config.gateway.port):  # the plan checked it just before `early`'s exec
        return None
    relay = ExitRelay()
    process = GatewayProcess(config, token, provider_env, relay)
    try:
        pid = process.start(early)
    except Exception:  # SpawnError or a surprise: the machine's own Spawn meets it again and reports it as usual
        if early is not None:
            early.discard()
        return None
    return HeadStart(process, pid, relay, from_plan=early is not None and early.pid == pid)


def remember(config: Config, head_start: HeadStart, argv: Sequence[str]) -> None:
    """Write the start plan for the next `clawsvc run` with these arguments (service/startplan.py) from the
    gateway this one started; never raises: without a plan the next start only takes longer."""
    if head_start.from_plan or head_start.process.launched is None:
        return
    launch, env = head_start.process.launched
    sources = _secret_sources(config, env)
    gateway_dir = str(state_dir(config))
    files = [path for path in (os.path.abspath(config.source) if config.source else "", *launch)
             if os.path.isabs(path) and os.path.isfile(path)]
    dirs = [gateway_dir, *([str(cache)] if (cache := compile_cache_dir(config)) else [])]
    try:
        path = startplan.save(argv, launch, env, gateway_dir, config.gateway.port, sources, files, dirs)
    except (startplan.NotPlannable, OSError) as exc:
        log.info("no start plan for the next start (it will read the config before starting the gateway): %s", exc)
    except Exception:
        log.exception("writing the start plan failed (a bug); the next start reads the config first")
    else:
        log.debug("start plan for the next start written to %s", path)


def _secret_sources(config: Config, env: Mapping[str, str]) -> dict[str, str]:
    """For each secret in the gateway's env, the file it was read from (the token file, the generated token, a
    systemd credential), found by its value; a secret from the keyring or the config itself has none."""
    candidates = [str(state_dir(config) / GENERATED_TOKEN_NAME)]
    if config.auth.token_file is not None:
        candidates.insert(0, str(config.auth.token_file.absolute()))
    if credentials := os.environ.get("CREDENTIALS_DIRECTORY"):
        with contextlib.suppress(OSError):
            candidates.extend(sorted(os.path.join(credentials, name) for name in os.listdir(credentials)))
    values: dict[str, str] = {}
    for path in candidates:
        if (value := startplan.secret(path)) is not None:
            values.setdefault(value, path)
    return {name: values[value] for name, value in env.items() if is_secret_name(name) and value in values}
