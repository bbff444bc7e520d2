"""What the gateway's own log lines tell a supervisor that nothing else does: what a drain still waits for (its
RPCs answer UNAVAILABLE while it drains), and why it exited (exit 78 means a config error, but also a database a
newer build migrated, or another gateway holding the state dir).

Seen here (openclaw 2026.9.6), while stopping with a turn in flight:
  [gateway] draining active work before stop with timeout 315000ms: queueSize=2 pendingReplies=1 embeddedRuns=1 ...
  [gateway] active-work drain settled; beginning server close
and on stderr before an exit:
  Gateway failed to start: Invalid config at /var/lib/clawsvc/openclaw/openclaw.json:
  <root>: Unrecognized key: "bogusKey"
  Missing config. Run `openclaw setup` or set gateway.mode=local (or pass --allow-unconfigured).
  Gateway start blocked: existing config is missing gateway.mode. ...
  [gateway] refused startup because 1 OpenClaw database schema(s) are newer than this build. state database ...
  Gateway failed to start: another gateway instance is already listening on ws://127.0.0.1:18789 | ...
  Doctor could not enter maintenance. GatewayLockError: Legacy Gateway lock /.../gateway.6b4f5056.lock still has a
  live or unverified owner (PID 15965). ...
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable

from clawsvc.exits import ExitCause, ExitKind
from clawsvc.logs import redact
from clawsvc.text import cut

TAIL_LINES = 40  # the last lines of the gateway's output kept to explain its exit
TAIL_LINE_MAX = 1000
_DRAINING = re.compile(r"draining active work before (\w+)(?: with timeout \d+ms)?: (.*)$")
_COUNT = re.compile(r"\b([A-Za-z]+)=(\d+)\b")
_SETTLED = "active-work drain settled"
SETTLED = "its active work is done; closing"


def drain_notice(line: str) -> str | None:
    """"pendingReplies=1 embeddedRuns=1" (the counts that are not zero) from a drain progress line, SETTLED when the
    drain is over, else None."""
    if _SETTLED in line:
        return SETTLED
    match = _DRAINING.search(line)
    if match is None:
        return None
    counts = [f"{name}={number}" for name, number in _COUNT.findall(match.group(2)) if number != "0"]
    return f"waiting for {' '.join(counts)}" if counts else None


_INVALID = re.compile(r"Invalid config at (.+?):?$")
_LOCK_OWNER = re.compile(r"GatewayLockError: .*? live or unverified owner \(PID (\d+)\)")
_SCHEMA = "schema(s) are newer than this build"
DOCTOR = "clawsvc openclaw doctor --fix"


def exit_cause(tail: list[str]) -> ExitCause | None:
    """Why the gateway exited, from its last lines, with the fix; None when they do not say."""
    for index, line in enumerate(tail):
        if match := _INVALID.search(line):
            detail = tail[index + 1].strip() if index + 1 < len(tail) else ""
            return ExitCause(ExitKind.CONFIG, f"the gateway's own config {match.group(1)} is invalid"
                                              + (f" ({detail})" if detail else "") + f"; fix it, or run `{DOCTOR}`")
        if "Missing config." in line or "existing config is missing gateway.mode" in line:
            return ExitCause(ExitKind.CONFIG, "the gateway's own config (openclaw.json in gateway.state_dir) is "
                                              "missing gateway.mode or is not JSON; set gateway.mode to \"local\" "
                                              f"there, or run `{DOCTOR}`")
        if _SCHEMA in line:
            return ExitCause(ExitKind.SCHEMA, "its databases were migrated by a newer openclaw than this one "
                                              f"({line.split(_SCHEMA, 1)[1].strip(' .')[:300]}); run that version "
                                              "again (clawsvc upgrade VERSION), or restore the backup made before "
                                              "the upgrade")
        if match := _LOCK_OWNER.search(line):
            return ExitCause(ExitKind.LOCKED, f"another gateway (pid {match.group(1)}) is using its state dir; stop "
                                              "that gateway, or give this one its own gateway.state_dir")
        if "another gateway instance is already listening" in line:
            return ExitCause(ExitKind.PORT, "another gateway already listens on its port; stop it or change "
                                            "gateway.port")
    return None


class Notices:
    """Sees every line of both output pipes (from their pump threads): keeps the last TAIL_LINES, redacted, and
    hands drain progress to `on_drain`."""

    def __init__(self, on_drain: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._on_drain = on_drain

    def see(self, line: str) -> None:
        with self._lock:
            self._tail.append(cut(redact(line), TAIL_LINE_MAX))
        notice = drain_notice(line)
        if notice is not None and self._on_drain is not None:
            self._on_drain(notice)

    def tail(self) -> list[str]:
        with self._lock:
            return list(self._tail)
