"""Events: the double floods N events with consecutive seq; count what reaches on_event, and how fast.

on_event does what the supervisor's does (put the event on a SimpleQueue); a consumer thread counts the
events and checks that their seq has no gap. The baseline is a bare websocket-client loop that reads and
parses the same flood on its own connection, alternating with clawsvc's.
The stream row runs `clawsvc run` on the double and one `clawsvc events --follow --json` consumer, and
counts the flood's lines on that consumer's stdout (and its `missed` records).
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Context, Row, Section, median, realgw
from bench.service import ServiceRun
from clawsvc.gateway.connection import GatewayConnection
from clawsvc.gateway.protocol import GatewayEvent
from tests.double import start_double

TARGET_RATE = 10_000
FLOOD_TIMEOUT = 300.0


@dataclass(frozen=True)
class Flood:
    sent: int
    received: int
    gaps: int
    seconds: float  # flood request sent → last event handled

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


class Counter:
    """Counts `flood` events and the gaps in their seq; `queued` hands each event to a consumer thread first
    through a SimpleQueue, as the supervisor's on_event does, instead of counting on the reader thread."""

    def __init__(self, queued: bool) -> None:
        self.count = 0
        self.gaps = 0
        self.last_seq: int | None = None
        self.last_at = 0.0
        self.inbox: queue.SimpleQueue[GatewayEvent | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        if queued:
            self.thread = threading.Thread(target=self._consume, name="clawsvc-bench-events", daemon=True)
            self.thread.start()

    def on_event(self, event: GatewayEvent) -> None:
        if self.thread is not None:
            self.inbox.put(event)
        else:
            self.handle(event)

    def handle(self, event: GatewayEvent) -> None:
        if event.name != "flood":
            return
        if self.last_seq is not None and event.seq != self.last_seq + 1:
            self.gaps += 1
        self.last_seq = event.seq
        self.count += 1
        self.last_at = time.perf_counter()

    def _consume(self) -> None:
        while (event := self.inbox.get()) is not None:
            self.handle(event)

    def finish(self) -> None:
        if self.thread is not None:
            self.inbox.put(None)
            self.thread.join(FLOOD_TIMEOUT)


def flood_clawsvc(url: str, token: str, count: int, queued: bool = False) -> Flood:
    counter = Counter(queued)
    conn = GatewayConnection(url, token, verify_peer=None, request_timeout=FLOOD_TIMEOUT, on_event=counter.on_event)
    conn.connect()
    try:
        t0 = time.perf_counter()
        conn.rpc("double.flood", {"count": count})
    finally:
        conn.close()
        counter.finish()
    return Flood(count, counter.count, counter.gaps + conn.stats.seq_gaps, counter.last_at - t0)


def flood_queued(url: str, token: str, count: int) -> Flood:
    return flood_clawsvc(url, token, count, queued=True)


def flood_bare(url: str, token: str, count: int) -> Flood:
    ws, _hello = realgw.connect(url, token)
    ws.settimeout(FLOOD_TIMEOUT)
    received = gaps = 0
    last_seq: int | None = None
    try:
        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "req", "id": "flood", "method": "double.flood", "params": {"count": count}}))
        while True:
            frame = json.loads(ws.recv())
            if frame.get("type") == "res" and frame.get("id") == "flood":
                break
            if frame.get("event") == "flood":
                received += 1
                gaps += last_seq is not None and frame["seq"] != last_seq + 1
                last_seq = frame["seq"]
        seconds = time.perf_counter() - t0
    finally:
        ws.close()
    return Flood(count, received, gaps, seconds)


class StreamCounter:
    """Reads a `clawsvc events --follow --json` consumer's stdout: flood lines, missed counts, markers."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.floods = self.missed = self.markers = 0
        self.last_at = 0.0
        self.thread = threading.Thread(target=self._read, name="clawsvc-bench-stream", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            event = json.loads(line)
            if event["name"] == "flood":
                self.floods += 1
                self.last_at = time.perf_counter()
            elif event["name"] == "missed":
                self.missed += event["payload"]["count"]
            elif event["name"] == "marker":
                self.markers += 1


def flood_stream(ctx: Context, count: int) -> Flood:
    """Events through clawsvc, its control socket and one `clawsvc events --follow --json` process."""
    with ServiceRun(ctx.backend("double")).start() as svc:
        svc.wait_ready()
        argv = [sys.executable, "-m", "clawsvc", "events", "-c", str(svc.config_path), "--follow", "--json",
                "--name", "flood", "--name", "marker"]
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            counter = StreamCounter(popen)
            deadline = time.monotonic() + 30
            while not counter.markers:  # subscribed once a marker event comes through
                if time.monotonic() > deadline:
                    raise TimeoutError("the events consumer never got a marker event")
                svc.request("rpc", method="double.event", params={"event": "marker", "payload": {}})
                threading.Event().wait(0.2)
            t0 = time.perf_counter()
            svc.request("rpc", timeout=FLOOD_TIMEOUT, method="double.flood", params={"count": count})
            end = time.monotonic() + 60
            while counter.floods + counter.missed < count and time.monotonic() < end:
                threading.Event().wait(0.05)
            return Flood(count, counter.floods, 0, counter.last_at - t0)
        finally:
            popen.kill()
            popen.wait()


def run(ctx: Context) -> Section:
    count = ctx.reps(30_000, 5_000)
    rounds = ctx.reps(3, 1)
    results: dict[str, list[Flood]] = {"bare": [], "direct": [], "queued": []}
    floods = {"bare": flood_bare, "direct": flood_clawsvc, "queued": flood_queued}
    root = Path(tempfile.mkdtemp(prefix="clawsvc-bench-"))
    try:
        with start_double(root) as gw:
            flood_bare(gw.url, gw.token, 500)  # warm-up
            for i in range(rounds):
                order = list(floods) if i % 2 == 0 else list(reversed(floods))
                for kind in order:
                    results[kind].append(floods[kind](gw.url, gw.token, count))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    stream = [flood_stream(ctx, count) for _ in range(rounds)]
    return report(results, count, stream)


def capped(bare_rate: float) -> str:
    if bare_rate >= TARGET_RATE:
        return ""
    return (f"The double itself delivers only {bare_rate:,.0f} events/s to a bare loop on this machine, so the "
            "target cannot be shown here; read the ratio. ")


def report(results: dict[str, list[Flood]], count: int, stream: list[Flood]) -> Section:
    bare_rate = median([f.rate for f in results["bare"]])
    mine = results["direct"] + results["queued"]
    lost = sum(f.sent - f.received for f in mine)
    gaps = sum(f.gaps for f in mine)
    section = Section("events", f"Events (double.flood, {count:,} events, {len(results['direct'])} round(s) each)")
    rate = median([f.rate for f in results["direct"]])
    section.add(Row("events dispatched to on_event", f"{rate:,.0f} /s", f"{bare_rate:,.0f} /s bare",
                    f"{rate / bare_rate:.2f}x", f">= {TARGET_RATE:,} /s", rate >= TARGET_RATE),
                why_missed=capped(bare_rate) + "clawsvc's reader also select()s before each frame, parses it "
                           "into a GatewayEvent and checks its seq; websocket-client validates UTF-8 in pure Python "
                           "on both sides.")
    queued = median([f.rate for f in results["queued"]])
    section.add(Row("  handed on through a queue (supervisor's path)", f"{queued:,.0f} /s",
                    f"{bare_rate:,.0f} /s bare", f"{queued / bare_rate:.2f}x", f">= {TARGET_RATE:,} /s",
                    queued >= TARGET_RATE),
                why_missed=capped(bare_rate) + "the reader thread and the consuming thread take turns on the GIL "
                           "for every event.")
    section.add(Row("events lost", f"{lost}", f"{sum(f.sent - f.received for f in results['bare'])} bare", "",
                    "0", lost == 0), why_missed=f"{gaps} gap(s) in seq were seen.")
    section.add(Row("seq gaps seen", f"{gaps}", f"{sum(f.gaps for f in results['bare'])} bare"))
    streamed = median([f.rate for f in stream])
    missed = sum(f.sent - f.received for f in stream)
    section.add(Row("  through `clawsvc events --follow --json` (one consumer)", f"{streamed:,.0f} /s",
                    f"{bare_rate:,.0f} /s bare", f"{streamed / bare_rate:.2f}x"))
    section.add(Row("  missed by that consumer", f"{missed}", "", "", "reported, never silent"))
    section.notes.append("Rate = events handled / (flood request sent → last event handled); the double sends "
                         "every event before its reply, so the double's own send rate caps every side. "
                         "\"on_event\" counts and checks seq on the reader thread; \"through a queue\" puts each "
                         "event on a SimpleQueue for another thread, as Connector → Supervisor does. Lost and gaps "
                         "are summed over both. The stream row adds the hub, the control socket's follower "
                         "thread and the `clawsvc events` process (JSON in, JSON out) to the queued path; what "
                         "that consumer could not keep up with arrives as `missed` counts.")
    return section
