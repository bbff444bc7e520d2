"""What the gateway's own log lines tell a supervisor that nothing else does: what a drain still waits for (its
RPCs answer UNAVAILABLE while it drains), and the last lines before an exit, from which the exit is explained.

Seen here (openclaw 2026.9.6), while stopping with a turn in flight:
  [gateway] draining active work before stop with timeout 315000ms: queueSize=2 pendingReplies=1 embeddedRuns=1 ...
  [gateway] active-work drain settled; beginning server close
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Callable

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
