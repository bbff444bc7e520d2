"""The reader's bookkeeping for one GatewayConnection, free of sockets and threads: received frames decoded (a
malformed one counted and reported sparsely), event sequence gaps noticed, and the liveness deadlines (tick
silence, ping, pong) the reader waits for.

A frame's size is checked before it is parsed. An event frame over EVENT_MAX is never parsed: what it is comes
from its first members (leading_members) and its seq from its end, and it is passed on as its size. One kept
whole but over PARSED_MAX is parsed (that is the check that it is JSON) and its payload passed on as its JSON text
(RawJSON), so that no parsed copy of it waits in a queue or a buffer: parsed, 256 KB of `[[],[],...]` is ~6 MB."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from websocket import ABNF

from clawsvc import jsontext
from clawsvc.gateway.protocol import GatewayError, GatewayEvent, MalformedFrame, Response, is_int, parse_frame

log = logging.getLogger("clawsvc.gateway.connection")  # these lines are about the connection
EVENT_MAX = 256 * 1024  # bytes of one event frame kept whole; a bigger one is passed on as its size, unparsed
PARSED_MAX = 4096  # bytes of an event frame whose payload goes on parsed (the machine reads a shutdown's)
FRAME_MAX = 64 << 20  # bytes of any frame parsed; an answer that big could not reach `clawsvc rpc` anyway
HEAD = 1024  # bytes looked at to tell what an unparsed frame is
_TAIL_SEQ = re.compile(rb'"seq"[ \t\n\r]*:[ \t\n\r]*(\d{1,18})[ \t\n\r]*}[ \t\n\r]*\Z')
_DECODER = json.JSONDecoder()

PONG_TIMEOUT_MAX = 10.0


@dataclass
class ConnectionStats:
    """Counters over the life of a connection object (all its links); written by the reader thread only."""

    events: int = 0
    malformed: int = 0
    seq_gaps: int = 0
    unmatched: int = 0
    pings: int = 0


class FrameCheck:
    """Decodes frames and watches event sequence numbers for one connection object; the reader thread's alone."""

    def __init__(self, url: str, stats: ConnectionStats) -> None:
        self.url = url
        self.stats = stats
        self.last_seq: int | None = None  # reset for each new link

    def parse(self, opcode: int, data: bytes) -> Response | GatewayEvent | None:
        """The frame, or None for one this client cannot use (counted, and reported now and then)."""
        try:
            if opcode == ABNF.OPCODE_TEXT and len(data) > EVENT_MAX and (unparsed := _unparsed(data)) is not None:
                return unparsed
            frame = parse_frame(data.decode("utf-8") if opcode == ABNF.OPCODE_TEXT else data)
            return _kept(frame, len(data)) if isinstance(frame, GatewayEvent) else frame
        except UnicodeDecodeError:
            exc = MalformedFrame("text frame is not valid UTF-8")
        except MalformedFrame as caught:
            exc = caught
        self._count_malformed(exc)
        return None

    def _count_malformed(self, exc: MalformedFrame) -> None:
        self.stats.malformed += 1
        count = self.stats.malformed
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th...: a flood cannot flood the journal
            log.warning("ignored a malformed frame from gateway at %s: %s (%d so far; the next report "
                        "comes at %d)", self.url, exc, count, count * 2)

    def check_seq(self, event: GatewayEvent) -> None:
        if event.seq is None:
            return
        last, self.last_seq = self.last_seq, event.seq
        if last is not None and event.seq > last + 1:
            self.stats.seq_gaps += 1
            log.warning("gateway events %d..%d never arrived (before %s); state may be stale",
                        last + 1, event.seq - 1, event.name)
        elif last is not None and event.seq <= last:
            log.info("gateway event sequence restarted at %d (was %d)", event.seq, last)


@dataclass
class Liveness:
    """The reader's deadlines: tick silence and, with pings on, the pong answer."""

    last_frame: float
    silence_limit: float
    ping_interval: float
    pong_timeout: float
    tick_interval: float
    pong_due: float | None = None
    last_ping: float | None = None

    def check(self, now: float) -> str | None:
        """Why the link is dead, or None."""
        if now - self.last_frame > self.silence_limit:
            return f"no tick for {now - self.last_frame:.1f}s (tickIntervalMs={self.tick_interval * 1000:.0f})"
        if self.pong_due is not None and now > self.pong_due:
            return f"no pong within {self.pong_timeout:g}s"
        return None

    def ping_due(self, now: float) -> bool:
        """True (and the pong clock started) when a ping should go out now."""
        if self.ping_interval <= 0 or (self.last_ping is not None and now < self.last_ping + self.ping_interval):
            return False
        self.last_ping = now
        self.pong_due = self.pong_due or now + self.pong_timeout
        return True

    def next_deadline(self) -> float:
        deadlines = [self.last_frame + self.silence_limit]
        if self.pong_due is not None:
            deadlines.append(self.pong_due)
        if self.ping_interval > 0 and self.last_ping is not None:
            deadlines.append(self.last_ping + self.ping_interval)
        return min(deadlines)


def leading_members(data: bytes, limit: int = HEAD) -> dict[str, Any]:
    """The members a JSON object starts with, up to the first whose value is an object or an array (or the first
    `limit` bytes): enough to tell an event (type, event) or an answer (type, id) without parsing the rest."""
    text = data[:limit].decode("utf-8", "ignore")
    members: dict[str, Any] = {}
    at = _blanks(text, 0)
    if not text.startswith("{", at):
        return members
    while True:
        at = _blanks(text, at + 1)
        if not text.startswith('"', at):
            return members
        try:
            key, at = _DECODER.raw_decode(text, at)
            at = _blanks(text, at)
            if not text.startswith(":", at):
                return members
            at = _blanks(text, at + 1)
            if text.startswith(("{", "["), at):
                return members
            members[key], at = _DECODER.raw_decode(text, at)
        except ValueError:  # cut at the limit, or not JSON
            return members
        at = _blanks(text, at)
        if not text.startswith(",", at):
            return members


def _blanks(text: str, at: int) -> int:
    """Where the JSON whitespace from `at` ends."""
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


def _unparsed(data: bytes) -> GatewayEvent | Response | None:
    """What a frame over EVENT_MAX is, without parsing it: an event passed on as its size, an answer too big to
    parse, or None to parse it (an answer, or a frame whose first members do not say)."""
    head = leading_members(data)
    legacy = head.get("jsonrpc") == "2.0"
    name = head.get("method") if legacy and head.get("id") is None else head.get("event")
    if (legacy or head.get("type") == "event") and isinstance(name, str) and name:
        seq = _TAIL_SEQ.search(data[-64:]) if not legacy else None
        return GatewayEvent(name, {"truncated": True, "bytes": len(data)}, int(seq.group(1)) if seq else None)
    if len(data) <= FRAME_MAX:
        return None
    answer = head.get("id")
    if (isinstance(answer, str) and answer) or is_int(answer):
        return Response(str(answer), None, GatewayError(
            "TOO_LARGE", f"the gateway's answer is {len(data)} bytes, more than the {FRAME_MAX} clawsvc takes"))
    raise MalformedFrame(f"a frame of {len(data)} bytes, more than the {FRAME_MAX} clawsvc parses")


def _kept(event: GatewayEvent, size: int) -> GatewayEvent:
    """An event as it goes on: its size only past EVENT_MAX, its payload as JSON text past PARSED_MAX."""
    if size > EVENT_MAX:  # a frame whose first members did not say it was an event
        return GatewayEvent(event.name, {"truncated": True, "bytes": size}, event.seq)
    if size <= PARSED_MAX:
        return event
    try:
        return GatewayEvent(event.name, jsontext.raw(event.payload), event.seq)
    except (ValueError, RecursionError):
        raise MalformedFrame("event payload nested too deeply to pass on") from None
