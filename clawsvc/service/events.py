"""`clawsvc events`: the event record and the buffer policy of one subscriber, as pure code (no threads, no
sockets, no clock of its own: whoever calls passes `now`). eventhub.py makes them thread-safe and shared.

What the hub holds on behalf of others is held as text: each event is encoded once (hold) into the JSON line
followers and `clawsvc events` get, and every buffer counts the bytes it holds. The history keeps the last
HISTORY events that fit in HISTORY_BYTES; each follower's outbox at most CAPACITY events and OUTBOX_BYTES,
counting the batch its writer is still sending; what does not fit is dropped and counted (`missed`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from clawsvc import jsontext
from clawsvc.service.catalogue import DROPPED, MISSED

TICK = "tick"  # kept out of the history and sent only to subscribers that ask for it by name
SOURCES = ("service", "gateway")
HISTORY = 200  # recent events (ticks left out) that `clawsvc events` without --follow prints
HISTORY_BYTES = 8 << 20  # ... as long as their JSON fits in this
CAPACITY = 1000  # events waiting for one subscriber; beyond that they are dropped and counted
OUTBOX_BYTES = 4 << 20  # bytes of JSON waiting for (or being written to) one subscriber, likewise
STUCK_AFTER = 60.0  # seconds a subscriber's socket may stay full before the subscriber is dropped
CLOSED_GRACE = 1.0  # once the socket is closing, seconds a blocked writer gets before it is dropped


@dataclass(frozen=True)
class Event:
    time: float  # wall clock (time.time()), stamped by the executor
    source: str  # "service" (clawsvc's own) or "gateway"
    name: str
    payload: Any  # parsed, or jsontext.RawJSON (a gateway payload the reader passed on as its text)
    seq: int | None = None  # the gateway's sequence number, where it sent one

    def to_json(self) -> dict[str, Any]:
        out = {"time": iso_time(self.time), "source": self.source, "name": self.name, "payload": self.payload}
        if self.seq is not None:
            out["seq"] = self.seq
        return out


@dataclass(frozen=True)
class Held:
    """An event as the hub holds it: its JSON object, encoded once, with its name (for the filters) and time."""

    name: str
    time: float
    json: bytes  # one line's worth, without the newline

    @property
    def size(self) -> int:
        return len(self.json)


def hold(event: Event) -> Held:
    """The event encoded once for everyone (on the loop's path: kept cheap), its payload as is when it is RawJSON;
    one JSON cannot express (it never is: payloads are parsed JSON or clawsvc's own) becomes null, marked."""
    try:
        payload, unencodable = jsontext.dumps(event.payload), b""
    except (ValueError, TypeError, RecursionError):
        payload, unencodable = b"null", b',"unencodable":true'
    seq = b"" if event.seq is None else b',"seq":%d' % event.seq
    line = b'{"time":"%s","source":%s,"name":%s,"payload":%s%s%s}' % (
        iso_time(event.time).encode(), jsontext.string(event.source), jsontext.string(event.name), payload, seq,
        unencodable)
    return Held(event.name, event.time, line)


_second: tuple[float, str] = (-1.0, "")  # the last whole second iso_time wrote, and how


def iso_time(when: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-11-28T21:00:00.123Z (as datetime.fromtimestamp(when, UTC) rounds
    and isoformat(timespec="milliseconds") cuts, but with the second's text written once per second)."""
    global _second
    fraction, whole = math.modf(when)
    micros = round(fraction * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:  # before 1970
        whole, micros = whole - 1, micros + 1_000_000
    second = _second  # one read: another thread may replace it meanwhile
    if second[0] != whole:
        second = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{second[1]}.{micros // 1000:03d}Z"


def wanted(names: frozenset[str] | None, name: str) -> bool:
    """Without names a subscriber gets everything but ticks; with names, exactly those."""
    return name in names if names else name != TICK


class History:
    """The last `size` events other than ticks, as many of them as fit in `budget` bytes."""

    def __init__(self, size: int = HISTORY, budget: int = HISTORY_BYTES) -> None:
        self._events: deque[Held] = deque()
        self._size = size
        self._budget = budget
        self._bytes = 0

    def add(self, event: Held) -> None:
        if event.name == TICK:
            return
        self._events.append(event)
        self._bytes += len(event.json)
        while len(self._events) > self._size or self._bytes > self._budget:
            self._bytes -= len(self._events.popleft().json)

    def recent(self, names: frozenset[str] | None) -> list[Held]:
        return [event for event in self._events if wanted(names, event.name)]


class Outbox:
    """One subscriber's buffer: at most `capacity` events and `budget` bytes wait, the batch its writer is still
    sending included; an event arriving when it does not fit is dropped and counted, and the subscriber's next
    batch ends with a `missed` record with the count, where the gap is. A writer whose socket stays full for
    `stuck_after` seconds is to be dropped (`stuck`).

    The writer calls take() until it returns [] (it is idle then: offer() answers True once, to wake it), sending
    a batch before it takes the next; sending(now) before each write to its socket and sent() after each that
    made progress."""

    def __init__(self, names: frozenset[str] | None, capacity: int = CAPACITY, budget: int = OUTBOX_BYTES,
                 stuck_after: float = STUCK_AFTER) -> None:
        self.names = names
        self.capacity = capacity
        self.budget = budget
        self.stuck_after = stuck_after
        self.closed = False
        self._pending: deque[Held] = deque()
        self._bytes = 0  # of what is pending and of the batch being sent
        self._missed = 0
        self.lost = 0  # every event dropped for this subscriber, for the metrics (never reset)
        self._missed_at = 0.0
        self._idle = False
        self._blocked_since: float | None = None

    def offer(self, event: Held) -> bool:
        """Queue the event if this subscriber wants it; True when the writer is idle and must be woken."""
        if self.closed or not wanted(self.names, event.name):
            return False
        size = len(event.json)
        if len(self._pending) >= self.capacity or self._bytes + size > self.budget:
            self._missed += 1
            self.lost += 1
            self._missed_at = event.time
            return False
        self._pending.append(event)
        self._bytes += size
        return self._wake()

    def take(self) -> list[Held] | None:
        """Everything waiting, oldest first (the batch taken before it is sent by now); [] when nothing is (the
        writer is idle from now on); None once the outbox is closed and drained."""
        batch = [*self._pending, *self._flush_missed()]
        self._pending.clear()
        self._bytes = sum(len(event.json) for event in batch)
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

    def _flush_missed(self) -> Iterable[Held]:
        if not self._missed:
            return ()
        count, self._missed = self._missed, 0
        return (hold(Event(self._missed_at, "service", MISSED.name, MISSED.payload(count))),)


def dropped(now: float, stuck_after: float) -> Event:
    """The last line a stuck subscriber is sent (if it fits) before it is dropped."""
    reason = f"this consumer took no events for {stuck_after:g}s; clawsvc dropped it"
    return Event(now, "service", DROPPED.name, DROPPED.payload(reason))
