"""Soak: restart the gateway (the double) over the control socket many times; fds and threads must not grow."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from bench.common import Context, Row, Section, fd_count, mib, rss_bytes, thread_count
from bench.service import ServiceRun, running_pid

QUIET_FOR = 1.0   # fds and threads unchanged this long = nothing in flight
QUIET_LIMIT = 15.0
WARM_UP = 3


@dataclass(frozen=True)
class Sample:
    fds: int
    threads: int
    rss: int


def settled(pid: int) -> Sample:
    """fds and threads once they stop changing (stopper/connector threads of the last restart have ended)."""
    pause = threading.Event()
    deadline = time.monotonic() + QUIET_LIMIT
    last = (fd_count(pid), thread_count(pid))
    since = time.monotonic()
    while time.monotonic() - since < QUIET_FOR and time.monotonic() < deadline:
        pause.wait(0.1)
        now = (fd_count(pid), thread_count(pid))
        if now != last:
            last, since = now, time.monotonic()
    return Sample(last[0], last[1], rss_bytes(pid))


def restart(run: ServiceRun, pid: int) -> int:
    mark = run.notify.mark()
    run.request("restart-gateway")
    new_pid = running_pid(run.wait_running(mark, not_pid=pid, timeout=60.0))
    assert new_pid is not None
    return new_pid


def run(ctx: Context) -> Section:
    cycles = ctx.reps(300, 20)
    with ServiceRun(ctx.backend("double")) as run:
        run.start()
        pid = running_pid(run.wait_ready())
        assert pid is not None
        for _ in range(WARM_UP):
            pid = restart(run, pid)
        before = settled(run.pid)
        t0 = time.monotonic()
        for _ in range(cycles):
            pid = restart(run, pid)
        elapsed = time.monotonic() - t0
        after = settled(run.pid)
        restarts = run.request("status")["restarts"]
    section = Section("soak", f"Soak ({cycles} restart-gateway cycles against the double, {elapsed:.0f} s)")
    section.add(Row("open fds", f"{after.fds} after", f"{before.fds} before", f"{after.fds - before.fds:+d}",
                    "no growth", after.fds <= before.fds),
                why_missed="file descriptors leak across gateway restarts.")
    section.add(Row("threads", f"{after.threads} after", f"{before.threads} before",
                    f"{after.threads - before.threads:+d}", "no growth", after.threads <= before.threads),
                why_missed="threads pile up across gateway restarts.")
    section.add(Row("RSS", mib(after.rss) + " after", mib(before.rss) + " before",
                    f"{(after.rss - before.rss) / 1024:+.0f} KiB"))
    section.add(Row("restart cycle (mean)", f"{elapsed / cycles * 1000:.0f} ms"))
    section.notes.append(f"Counted after {WARM_UP} warm-up restarts and again after the last one, each once fds and "
                         f"threads had not changed for {QUIET_FOR:g} s (from /proc). clawsvc counted {restarts} "
                         "restarts.")
    return section
