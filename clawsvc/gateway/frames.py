"""The reader's bookkeeping for one GatewayConnection, free of sockets and threads: received frames decoded (a
malformed one counted and reported sparsely), event sequence gaps noticed, and the liveness deadlines (tick
silence, ping, pong) the reader waits for."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from websocket import ABNF

from clawsvc.gateway.protocol import GatewayEvent, MalformedFrame, Response, parse_frame

log = logging.getLogger("clawsvc.gateway.connection")  # these lines are about the connection
EVENT_MAX = 256 * 1024  # bytes of one event frame kept whole; a bigger one is passed on as its size

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
            text = data.decode("utf-8") if opcode == ABNF.OPCODE_TEXT else data
            frame = parse_frame(text)
            if isinstance(frame, GatewayEvent) and len(data) > EVENT_MAX:  # held by every events subscriber
                return GatewayEvent(frame.name, {"truncated": True, "bytes": len(data)}, frame.seq)
            return frame
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
