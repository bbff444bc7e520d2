"""Connector threads: find out what holds the port, wait for a gateway's hello-ok, report one message to the loop."""

from __future__ import annotations

import functools
import http.client
import logging
import threading
import time
from collections.abc import Callable

from clawsvc import exitcodes
from clawsvc.config import Config
from clawsvc.connection import GatewayConnection
from clawsvc.events import Connected, ConnectFailed, GatewayEventSeen, LinkLost, Message, PortFree
from clawsvc.policy import readiness_retrying
from clawsvc.ports import port_holder, port_in_use
from clawsvc.protocol import (
    AuthError,
    GatewayEvent,
    LinkDown,
    ProtocolMismatchError,
    RetryableError,
    TransportError,
    describe_error,
)

log = logging.getLogger("clawsvc.connector")
Post = Callable[[Message], None]


def always() -> bool:
    return True


def readyz(port: int) -> bool:
    """The gateway's own HTTP readiness probe on its WebSocket port (200 once it can serve)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _forward_event(post: Post, gen: int, event: GatewayEvent) -> None:
    post(GatewayEventSeen(gen, event))


def _forward_down(post: Post, gen: int, down: LinkDown) -> None:
    post(LinkLost(gen, down))


class Connector:
    """Starts one short-lived thread per attempt; `cancel` (a stop) ends any wait at once."""

    def __init__(self, post: Post) -> None:
        self.post = post
        self.cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def _connection(self, config: Config, token: str, gen: int) -> GatewayConnection:
        return GatewayConnection.from_config(
            config, token,
            on_event=functools.partial(_forward_event, self.post, gen),
            on_down=functools.partial(_forward_down, self.post, gen),
        )

    def _start(self, name: str, target: Callable[..., None], *args: object) -> None:
        self.abort()
        self.cancel = threading.Event()
        self._thread = threading.Thread(target=target, args=(self.cancel, *args), name=f"clawsvc-{name}", daemon=True)
        self._thread.start()

    def abort(self) -> None:
        self.cancel.set()

    def probe(self, config: Config, token: str, gen: int) -> None:
        """Adopt a gateway already answering on the port, refuse a stranger there, or report the port free."""
        self._start("probe", self._probe, config, token, gen)

    def wait_ready(self, config: Config, token: str, gen: int, timeout: float,
                   alive: Callable[[], bool], adopted: bool = False) -> None:
        """Handshake until hello-ok, retrying while the gateway is still starting (or the link is coming back)."""
        self._start("connect", self._wait_ready, config, token, gen, timeout, alive, adopted)

    def _probe(self, cancel: threading.Event, config: Config, token: str, gen: int) -> None:
        port = config.gateway.port
        if not port_in_use(port):
            self.post(PortFree(gen))
            return
        holder = port_holder(port)
        who = holder.describe() if holder else "another process"
        if not config.gateway.adopt_existing:
            self.post(ConnectFailed(gen, f"port {port} is already in use by {who}; free it, change gateway.port, "
                                         "or set gateway.adopt_existing: true to attach to a gateway there",
                                    fatal=True))
            return
        log.info("port %d is in use by %s; trying to adopt it as an existing gateway", port, who)
        self._wait_ready(cancel, config, token, gen, config.connection.handshake_timeout * 2,
                         always, True, who)

    def _wait_ready(self, cancel: threading.Event, config: Config, token: str, gen: int, timeout: float,
                    alive: Callable[[], bool], adopted: bool, stranger: str | None = None) -> None:
        retry_on = (RetryableError,) if stranger is not None else (RetryableError, TransportError)
        ready = functools.partial(readyz, config.gateway.port)
        retrying = readiness_retrying(cancel, timeout, alive, retry_on, ready)
        connection: GatewayConnection | None = None
        started = time.monotonic()
        try:
            for attempt in retrying:
                with attempt:
                    connection = self._connection(config, token, gen)
                    hello = connection.connect()
        except AuthError as exc:
            self._report(cancel, ConnectFailed(
                gen, f"the gateway on port {config.gateway.port} rejected our token: {exc}; check auth.token_file "
                     "or the gateway's own auth config", fatal=True, exit_code=exitcodes.CONFIG))
            return
        except ProtocolMismatchError as exc:
            self._report(cancel, ConnectFailed(gen, f"protocol mismatch with the gateway: {exc}", fatal=True,
                                               exit_code=exitcodes.CONFIG))
            return
        except Exception as exc:  # the loop decides what a failed start means; never let this thread die silently
            if stranger is not None and not isinstance(exc, RetryableError):
                message = (f"port {config.gateway.port} is held by {stranger}, which does not answer as an "
                           f"OpenClaw gateway ({describe_error(exc)}); stop it or change gateway.port")
                self._report(cancel, ConnectFailed(gen, message, fatal=True))
            elif isinstance(exc, retry_on) and time.monotonic() - started >= timeout:
                self._report(cancel, ConnectFailed(gen, f"no hello-ok within {timeout:g}s (last answer: "
                                                        f"{describe_error(exc)})", fatal=False))
            else:
                self._report(cancel, ConnectFailed(gen, describe_error(exc), fatal=False))
            return
        if cancel.is_set():
            connection.close()
            return
        self.post(Connected(gen, connection, hello, adopted))

    def _report(self, cancel: threading.Event, message: Message) -> None:
        if not cancel.is_set():
            self.post(message)
