"""The Control UI's login link for `clawsvc dashboard`, made by the service itself: the gateway's own
`openclaw dashboard --json`, run as the service's user with the gateway's environment (it records a single-use
bootstrap in the gateway's state), bounded in time and output, one at a time.

What its JSON holds (openclaw 2026.9.6): `browserUrl` http://127.0.0.1:PORT/#bootstrapToken=...&bootstrapProfile=
owner&gatewayUrl=ws://127.0.0.1:PORT (single use, for one browser, which it pairs as an administrator device;
expires at `browserBootstrapExpiresAtMs`, ten minutes on), `httpUrl`, `port`, and the older `url`, which carries the
shared gateway token itself unless openclaw.json takes it by SecretRef. Only the one-time link leaves here."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from clawsvc.boundedrun import Unfinished, run_bounded
from clawsvc.config import Config
from clawsvc.gateway.command import SpawnError, check_command
from clawsvc.gateway.process import build_env
from clawsvc.logs import redact
from clawsvc.text import cut

TIMEOUT = 120.0  # a cold CLI start: 7 s here idle, over 30 s seen under load
CAP = 256 * 1024
URL_MAX = 4096


class DashboardError(Exception):
    """No link: `code` for the control reply, str() one line (never a token)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse(output: bytes) -> dict[str, Any]:
    """The link out of the CLI's output (stdout and stderr together: its JSON is the last line that parses)."""
    answer: Any = None
    for line in reversed(output.decode("utf-8", "replace").splitlines()):
        if line.lstrip().startswith("{"):
            try:
                answer = json.loads(line)
                break
            except ValueError:
                continue
    if not isinstance(answer, dict):
        raise DashboardError("FAILED", "the gateway's `openclaw dashboard --json` printed no JSON answer")
    if answer.get("ok") is not True:
        reason = answer.get("reason")
        raise DashboardError("FAILED", "the gateway gave no login link: "
                             + (redact(cut(reason, 300)) if isinstance(reason, str) else "no reason given"))
    url, expires, port = answer.get("browserUrl"), answer.get("browserBootstrapExpiresAtMs"), answer.get("port")
    if not (isinstance(url, str) and url.startswith(("http://", "https://")) and "bootstrapToken=" in url
            and len(url) <= URL_MAX and url.isprintable()):
        raise DashboardError("FAILED", "the gateway's answer has no one-time browser link (browserUrl); is it older "
                                       "than openclaw 2026.9?")
    http = answer.get("httpUrl")
    http = http if isinstance(http, str) and http.isprintable() and len(http) <= URL_MAX else None
    if redact(url) != url or (http is not None and redact(http) != http):
        raise DashboardError("FAILED", "the gateway's link carries the gateway token or a key itself; not handed "
                                       "out (is openclaw.json's gateway.auth.token set? see clawsvc doctor)")
    return {"url": url, "expiresAtMs": expires if isinstance(expires, int) else None,
            "httpUrl": http,
            "port": port if isinstance(port, int) else None}


@dataclass(frozen=True)
class _Gateway:
    config: Config
    env: Mapping[str, str]


class Dashboard:
    """Issues links for the gateway the service talks to now (`note` on every connect), one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy = threading.Lock()
        self._gateway: _Gateway | None = None

    def note(self, config: Config, token: str) -> None:
        with self._lock:
            self._gateway = _Gateway(config, build_env(config, token, {}))

    def issue(self) -> dict[str, Any]:
        with self._lock:
            gateway = self._gateway
        if gateway is None:
            raise DashboardError("UNAVAILABLE", "clawsvc has not started a gateway yet")
        if not self._busy.acquire(blocking=False):
            raise DashboardError("BUSY", "another dashboard link is being made; try again in a moment")
        try:
            argv = check_command([*gateway.config.gateway.command, "dashboard", "--json"], gateway.env)
            done = run_bounded(argv, env=gateway.env, timeout=TIMEOUT, cap=CAP)
        except (SpawnError, Unfinished) as exc:
            raise DashboardError("FAILED", f"cannot run the gateway's `openclaw dashboard --json`: {exc}") from None
        finally:
            self._busy.release()
        return parse(done.output)
