"""`{"cmd": "events", "follow": true}`: the control socket's event streams. A follower gets one thread of its
own (not one of the request slots `status` needs), capped at MAX_FOLLOWERS; the thread takes what its Feed
holds and writes it with a short send timeout, so that a consumer whose socket stays full is noticed and
dropped, and one that hangs up is forgotten at once (its end of the socket turns readable)."""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from clawsvc.control.requests import ControlHandler, Feed, event_names
from clawsvc.control.wire import ControlError, Peer, encode, error, too_deep
from clawsvc.threads import start_thread

log = logging.getLogger("clawsvc.control.server")

MAX_FOLLOWERS = 8  # `clawsvc events --follow` consumers at once
RESERVED = 2  # of those, kept for root and the service's own uid
SEND_SLICE = 1.0  # seconds one send may block before the stuck rule is asked again
MAX_FOLLOW_REQUEST = 64 << 10  # bytes; a longer events request is answered (BAD_REQUEST) by requests.py
CHUNK = 64 << 10  # bytes of events joined into one write


@dataclass(frozen=True)
class Follow:
    names: frozenset[str] | None


def follow_request(raw: bytes) -> Follow | None:
    """The request line as a follow request; None for anything else (the request slots answer that)."""
    if len(raw) > MAX_FOLLOW_REQUEST or b'"events"' not in raw or too_deep(raw):
        return None
    try:
        request = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(request, dict) or request.get("cmd") != "events" or request.get("follow") is not True:
        return None
    try:
        return Follow(event_names(request.get("names")))
    except ControlError:
        return None  # requests.py says what is wrong with it


def chunks(lines: list[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """The lines (each without its newline) as writes of about `size` bytes: small ones joined, a big one on its
    own, so a batch is never copied whole."""
    group: list[bytes] = []
    length = 0
    for line in lines:
        if group and length + len(line) > size:
            yield b"\n".join(group) + b"\n"
            group, length = [], 0
        group.append(line)
        length += len(line) + 1
    if group:
        yield b"\n".join(group) + b"\n"


class _Closing(Exception):
    """A follow request that raced the control socket's close."""


class Followers:
    def __init__(self, handler: ControlHandler, uid: int) -> None:
        self.handler = handler
        self._uid = uid
        self._lock = threading.Lock()
        self._feeds: set[Feed] = set()
        self._count = 0
        self._closed = False

    def serve(self, conn: socket.socket, follow: Follow, peer: Peer | None) -> None:
        """Called from the accept loop: never waits on the client."""
        privileged = peer is None or peer.uid in (0, self._uid)
        with self._lock:
            full = self._count >= (MAX_FOLLOWERS if privileged else MAX_FOLLOWERS - RESERVED)
            if not full and not self._closed:
                self._count += 1
        if full or self._closed:
            _say(conn, error("BUSY", f"clawsvc has {self._count} events followers already; try again later"))
            conn.close()
            return
        feed: Feed | None = None
        try:
            feed = self.handler.subscribe(follow.names)
            with self._lock:  # close() may have run since the check above: decide again, with the feed known
                closing = self._closed
                if not closing:
                    self._feeds.add(feed)
            if closing:
                raise _Closing
            start_thread("events", self._follow, conn, feed, peer)
        except Exception as exc:  # closing, or out of fds or threads: refuse this one, keep serving
            if not isinstance(exc, _Closing):
                log.warning("control socket: cannot follow events for a client: %s", exc)
            if feed is not None:
                feed.close()
            _say(conn, error("UNAVAILABLE", "clawsvc is closing its control socket") if isinstance(exc, _Closing)
                 else error("BUSY", "clawsvc cannot take an events follower right now; try again"))
            conn.close()
            self._done(feed)

    def close(self) -> None:
        """The socket is closing: every follower sends what it has, then ends."""
        with self._lock:
            self._closed = True
            feeds = list(self._feeds)
        for feed in feeds:
            feed.end()

    def _done(self, feed: Feed | None) -> None:
        with self._lock:
            self._count -= 1
            if feed is not None:
                self._feeds.discard(feed)

    def _follow(self, conn: socket.socket, feed: Feed, peer: Peer | None) -> None:
        try:
            with conn:
                conn.setblocking(True)
                conn.settimeout(SEND_SLICE)
                if _send(conn, feed, encode({"ok": True, "result": "following"}), peer):
                    _pump(conn, feed, peer)
        except Exception:  # a bug here must end this follower only
            log.exception("control socket: an events follower failed")
        finally:
            feed.close()
            self._done(feed)


def _pump(conn: socket.socket, feed: Feed, peer: Peer | None) -> None:
    with selectors.DefaultSelector() as selector:
        selector.register(conn, selectors.EVENT_READ)
        selector.register(feed, selectors.EVENT_READ)
        while True:
            batch = feed.take()
            if batch is None:
                return
            if batch:
                if not all(_send(conn, feed, chunk, peer) for chunk in chunks(batch)):
                    return
                continue
            for key, _ in selector.select():
                if key.fileobj is conn and _hung_up(conn):
                    return


def _hung_up(conn: socket.socket) -> bool:
    """The client's side turned readable: it closed (or sent something, which a follower never should)."""
    try:
        return not conn.recv(4096)
    except TimeoutError:
        return False
    except OSError:
        return True


def _send(conn: socket.socket, feed: Feed, data: bytes, peer: Peer | None) -> bool:
    """Write all of `data` (whole lines); False when the client is gone or was dropped for not reading."""
    view = memoryview(data)
    while view:
        feed.sending(time.monotonic())
        try:
            sent = conn.send(view)
        except TimeoutError:
            last = feed.stuck(time.monotonic())
            if last is None:
                continue
            who = f" (pid {peer.pid})" if peer else ""
            log.warning("control socket: dropped an events follower%s: %s", who, last["payload"]["reason"])
            mid_line = len(view) < len(data) and data[len(data) - len(view) - 1] != ord("\n")
            _say(conn, last, mid_line)
            return False
        except OSError as exc:
            log.debug("events follower went away: %s", exc)
            return False
        feed.sent()
        view = view[sent:]
    return True


def _say(conn: socket.socket, message: dict[str, Any], mid_line: bool = False) -> None:
    """A last line, if it fits right now (after ending a line cut short)."""
    with contextlib.suppress(OSError):
        conn.setblocking(False)
        conn.send(b"\n" * mid_line + encode(message))
