"""`clawsvc events`: the event record and the buffer policy of one subscriber, as pure code (no threads, no
sockets, no clock of its own: whoever calls passes `now`). eventhub.py makes them thread-safe and shared."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TICK = "tick"  # kept out of the history and sent only to subscribers that ask for it by name
SOURCES = ("service", "gateway")
HISTORY = 200  # recent events (ticks left out) that `clawsvc events` without --follow prints
CAPACITY = 1000  # events waiting for one subscriber; beyond that they are dropped and counted
STUCK_AFTER = 60.0  # seconds a subscriber's socket may stay full before the subscriber is dropped
CLOSED_GRACE = 1.0  # once the socket is closing, seconds a blocked writer gets before it is dropped


@dataclass(frozen=True)
class Event:
    time: float  # wall clock (time.time()), stamped by the executor
    source: str  # "service" (clawsvc's own) or "gateway"
    name: str
    payload: Any
    seq: int | None = None  # the gateway's sequence number, where it sent one

    def to_json(self) -> dict[str, Any]:
        out = {"time": iso_time(self.time), "source": self.source, "name": self.name, "payload": self.payload}
        if self.seq is not None:
            out["seq"] = self.seq
        return out


def iso_time(when: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-11-28T21:00:00.123Z."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wanted(names: frozenset[str] | None, name: str) -> bool:
    """Without names a subscriber gets everything but ticks; with names, exactly those."""
    return name in names if names else name != TICK


class History:
    """The last `size` events other than ticks."""

    def __init__(self, size: int = HISTORY) -> None:
        self._events: deque[Event] = deque(maxlen=size)

    def add(self, event: Event) -> None:
        if event.name != TICK:
            self._events.append(event)

    def recent(self, names: frozenset[str] | None) -> list[Event]:
        return [event for event in self._events if wanted(names, event.name)]


class Outbox:
    """One subscriber's buffer: at most `capacity` events wait; an event arriving when it is full is dropped
    and counted; the subscriber's next batch ends with a `missed` record with the count, where the gap is.
    A writer whose socket stays full for `stuck_after` seconds is to be dropped (`stuck`).

    The writer calls take() until it returns [] (it is idle then: offer() answers True once, to wake it),
    sending(now) before each write to its socket and sent() after each that made progress."""

    def __init__(self, names: frozenset[str] | None, capacity: int = CAPACITY,
                 stuck_after: float = STUCK_AFTER) -> None:
        self.names = names
        self.capacity = capacity
        self.stuck_after = stuck_after
        self.closed = False
        self._pending: deque[Event] = deque()
        self._missed = 0
        self._missed_at = 0.0
        self._idle = False
        self._blocked_since: float | None = None

    def offer(self, event: Event) -> bool:
        """Queue the event if this subscriber wants it; True when the writer is idle and must be woken."""
        if self.closed or not wanted(self.names, event.name):
            return False
        if len(self._pending) >= self.capacity:
            self._missed += 1
            self._missed_at = event.time
            return False
        self._pending.append(event)
        return self._wake()

    def take(self) -> list[Event] | None:
        """Everything waiting, oldest first; [] when nothing is (the writer is idle from now on); None once the
        outbox is closed and drained."""
        batch = [*self._pending, *self._flush_missed()]
        self._pending.clear()
        if batch:
            return batch
        if self.closed:
            return None
        self._idle = True
        return []

    def close(self) -> bool:
        """No more events; what is waiting is still taken. True when the writer must be woken to see it."""
        self.closed = True
        return self._wake()

    def sending(self, now: float) -> None:
        if self._blocked_since is None:
            self._blocked_since = now

    def sent(self) -> None:
        self._blocked_since = None

    def stuck(self, now: float) -> bool:
        """The writer has made no progress for stuck_after seconds (CLOSED_GRACE once the socket is closing:
        a stop or a reload must not wait a minute for a consumer that stopped reading)."""
        limit = CLOSED_GRACE if self.closed else self.stuck_after
        return self._blocked_since is not None and now - self._blocked_since >= limit

    def _wake(self) -> bool:
        idle, self._idle = self._idle, False
        return idle

    def _flush_missed(self) -> Iterable[Event]:
        if not self._missed:
            return ()
        count, self._missed = self._missed, 0
        return (Event(self._missed_at, "service", "missed", {"count": count}),)


def dropped(now: float, stuck_after: float) -> Event:
    """The last line a stuck subscriber is sent (if it fits) before it is dropped."""
    reason = f"this consumer took no events for {stuck_after:g}s; clawsvc dropped it"
    return Event(now, "service", "dropped", {"reason": reason})
