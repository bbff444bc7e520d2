"""The gateway's unauthenticated HTTP probes on its own port, read from loopback (a local-direct caller gets the
details): `/startupz` ({"status": "starting" | "started" | "draining"}) and `/readyz` ({"ready": bool,
"failing": ["gateway-draining", "agent-database:main", ...]}). The Control UI answers unknown paths with a
catch-all 200, so the JSON decides, never the status code alone. Bounded in time and size: whatever holds the
port may be a stranger (nothing is sent to it but the GET)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clawsvc.text import cut, printable

TIMEOUT = 0.5
MAX_BODY = 64 * 1024
MAX_FAILING = 20  # names of failing subsystems kept
MAX_NAME = 80


def _get_json(port: int, path: str) -> dict[str, Any] | None:
    """The JSON object a GET of `path` answers with (any status), or None (no answer, not JSON, too big)."""
    import http.client  # the HTTP stack comes with the first probe, after the gateway's spawn

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_BODY + 1)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    if len(body) > MAX_BODY:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def startup_status(port: int) -> str | None:
    """"started", "starting" or "draining" as /startupz says; None when it says nothing usable (an older gateway,
    nothing listening, not JSON)."""
    status = (_get_json(port, "/startupz") or {}).get("status")
    return status if status in ("started", "starting", "draining") else None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    failing: tuple[str, ...] = ()


def readiness(port: int) -> Readiness | None:
    """What /readyz says, or None when it says nothing usable."""
    data = _get_json(port, "/readyz")
    if data is None or not isinstance(data.get("ready"), bool):
        return None
    names = data.get("failing")
    failing = [printable(cut(name, MAX_NAME)) for name in names if isinstance(name, str) and name] \
        if isinstance(names, list) else []
    return Readiness(data["ready"], tuple(failing[:MAX_FAILING]))
