"""An alert hook's webhook: the event JSON as a POST, bounded in time (the whole exchange: its socket is shut down
at the deadline) and in what is read back, following a redirect only to the same scheme, host and port, with
headers (a bearer token) from a file trusted like a secret. A URL's path may be a secret itself (a chat's incoming
webhook): messages name only its scheme, host and port."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from clawsvc import __version__, trust
from clawsvc.logs import register_secret
from clawsvc.text import cut, printable
from clawsvc.threads import start_thread

if TYPE_CHECKING:
    import http.client

MAX_REDIRECTS = 3
MAX_BODY = 64 * 1024  # of an answer: read and dropped
MAX_HEADERS = 32
REDIRECTS = (301, 302, 303, 307, 308)
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")


class HookFailed(Exception):
    """One line: why the webhook did not take the event (never its URL's path, never a header's value)."""


def read_headers(path: Path) -> dict[str, str]:
    """`Name: value` lines of a file trusted like a secret (owner root or ours, not writable by others); blank
    lines and # comments are skipped; each value is registered for redaction."""
    try:
        text = trust.read_secret(path, "alert headers_file").text
    except (trust.TrustError, OSError) as exc:
        raise HookFailed(f"headers_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, value = line.partition(":")
        if not colon or not _NAME.fullmatch(name.strip()) or not value.strip():
            raise HookFailed(f"headers_file {path}:{number}: expected a line 'Name: value'")
        if not (value.isascii() and value.isprintable()):
            raise HookFailed(f"headers_file {path}:{number}: the value of {name.strip()} is not printable ASCII, "
                             "which is all an HTTP header carries")
        headers[name.strip()] = value.strip()
        register_secret(value.strip())
    if len(headers) > MAX_HEADERS:
        raise HookFailed(f"headers_file {path}: more than {MAX_HEADERS} headers")
    return headers


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def _shown(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


class _Cutoff:
    """Shuts a connection's socket down at `deadline`: a socket timeout bounds each read, not the exchange, and a
    peer that sends a byte now and then would hold the hook for hours."""

    def __init__(self, connection: http.client.HTTPConnection, deadline: float) -> None:
        self._connection = connection
        self._deadline = deadline
        self._done = threading.Event()
        self.fired = False
        start_thread("webhook-cutoff", self._watch)

    def _watch(self) -> None:
        if self._done.wait(max(0.0, self._deadline - time.monotonic())):
            return
        self.fired = True
        sock = self._connection.sock
        if sock is not None:  # socket.socket's own shutdown, under TLS too: the reader is told, not the TLS layer
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._done.set()


def post(url: str, body: bytes, timeout: float, headers_file: Path | None = None) -> int:
    """POST `body` (JSON) to `url` within `timeout` seconds in all; the 2xx status, else HookFailed."""
    import http.client  # the HTTP stack comes with the first webhook

    headers = {"Content-Type": "application/json", "User-Agent": f"clawsvc/{__version__}"}
    if headers_file is not None:
        headers.update(read_headers(headers_file))
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HookFailed(f"{_shown(url)} did not answer within {timeout:g}s")
        scheme, host, port = _origin(url)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        connection = kind(host, port, timeout=remaining)
        cutoff = _Cutoff(connection, deadline)
        try:
            connection.request("POST", target, body=body, headers={**headers, "Content-Length": str(len(body))})
            answer = connection.getresponse()
            answer.read(MAX_BODY)
            status, reason, location = answer.status, answer.reason, answer.getheader("Location")
        except (OSError, http.client.HTTPException, ValueError) as exc:  # ValueError: what http.client refuses
            if cutoff.fired or isinstance(exc, TimeoutError):
                raise HookFailed(f"{_shown(url)} did not answer within {timeout:g}s") from None
            raise HookFailed(f"{_shown(url)}: {exc.__class__.__name__}: "
                             f"{printable(cut(str(getattr(exc, 'strerror', None) or exc), 120))}") from None
        finally:
            cutoff.cancel()
            connection.close()
        if cutoff.fired:  # cut short, yet parsed as an answer: a truncated one is none
            raise HookFailed(f"{_shown(url)} did not answer within {timeout:g}s")
        if 200 <= status < 300:
            return status
        if status not in REDIRECTS or not location:
            raise HookFailed(f"{_shown(url)} answered HTTP {status} {printable(cut(reason or '', 80))}")
        nxt = urljoin(url, location)
        if _origin(nxt) != _origin(url):
            raise HookFailed(f"{_shown(url)} redirected to another host ({_shown(nxt)}); not followed")
        url = nxt
    raise HookFailed(f"{_shown(url)} redirected more than {MAX_REDIRECTS} times")
