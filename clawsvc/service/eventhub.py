"""The event hub: the executor publishes every Emit here (from the loop thread), the control socket's
follower threads take from their own Feed. publish() never blocks and does no I/O per event: it encodes the
event once (events.hold), appends it to buffers bounded in events and bytes under one short lock, and writes one
wake-up byte only to a writer that is idle."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from clawsvc import jsontext
from clawsvc.service.events import (
    CAPACITY,
    HISTORY,
    HISTORY_BYTES,
    OUTBOX_BYTES,
    STUCK_AFTER,
    Event,
    Held,
    History,
    Outbox,
    dropped,
    hold,
)


class Feed:
    """One subscriber, as the control socket's follower thread sees it (clawsvc.control.requests.Feed): its
    fileno() becomes readable when take() has something new."""

    def __init__(self, hub: EventHub, outbox: Outbox) -> None:
        self._hub = hub
        self._outbox = outbox
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def take(self) -> list[bytes] | None:
        """Waiting events, each its JSON object encoded (one line without the newline); [] when there are none
        (wait for fileno()); None when ended. Taking the next batch says the one before is sent."""
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):  # before take(): a wake-up sent after it must stay readable
                pass
        with self._hub.lock:
            batch = self._outbox.take()
        return None if batch is None else [event.json for event in batch]

    def sending(self, now: float) -> None:
        with self._hub.lock:
            self._outbox.sending(now)

    def sent(self) -> None:
        with self._hub.lock:
            self._outbox.sent()

    def stuck(self, now: float) -> dict[str, Any] | None:
        """The last line for a subscriber that took nothing for too long (then drop it), else None."""
        with self._hub.lock:
            stuck = self._outbox.stuck(now)
        return dropped(time.time(), self._outbox.stuck_after).to_json() if stuck else None

    def end(self) -> None:
        """From outside the follower thread: no more events; the thread sends what is waiting, then stops."""
        with self._hub.lock:
            wake = self._outbox.close()
        if wake:
            self.wake()

    def close(self) -> None:
        """From the follower thread when it is done: forget this subscriber at once."""
        self._hub.forget(self)
        self._wake_r.close()
        self._wake_w.close()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is already pending) or closed
            self._wake_w.send(b"x")

    def offer(self, event: Held) -> bool:
        """With the hub's lock held."""
        return self._outbox.offer(event)

    @property
    def lost(self) -> int:
        """With the hub's lock held: the events this subscriber did not take in time."""
        return self._outbox.lost


class EventHub:
    def __init__(self, history: int = HISTORY, capacity: int = CAPACITY, stuck_after: float = STUCK_AFTER,
                 history_bytes: int = HISTORY_BYTES, outbox_bytes: int = OUTBOX_BYTES) -> None:
        self.lock = threading.Lock()
        self._history = History(history, history_bytes)
        self._feeds: set[Feed] = set()
        self._capacity = capacity
        self._outbox_bytes = outbox_bytes
        self._stuck_after = stuck_after
        self._missed = 0  # of subscribers gone; missed() adds the live ones'

    def publish(self, event: Event) -> None:
        held = hold(event)  # once for every subscriber, outside the lock
        with self.lock:
            self._history.add(held)
            idle = [feed for feed in self._feeds if feed.offer(held)]
        for feed in idle:
            feed.wake()

    def missed(self) -> int:
        """Every event a subscriber did not take in time, since the start (clawsvc_events_missed_total)."""
        with self.lock:
            return self._missed + sum(feed.lost for feed in self._feeds)

    def history(self, names: frozenset[str] | None) -> jsontext.RawJSON:
        """The recent events as one JSON array, made of their encoded form (nothing is parsed again)."""
        with self.lock:
            recent = self._history.recent(names)
        return jsontext.array([event.json for event in recent])

    def subscribe(self, names: frozenset[str] | None) -> Feed:
        feed = Feed(self, Outbox(names, self._capacity, self._outbox_bytes, self._stuck_after))
        with self.lock:
            self._feeds.add(feed)
        return feed

    def forget(self, feed: Feed) -> None:
        with self.lock:
            if feed in self._feeds:
                self._feeds.discard(feed)
                self._missed += feed.lost

    def subscribers(self) -> int:
        with self.lock:
            return len(self._feeds)
