"""Footprint: clawsvc's RSS and idle CPU over a window, next to its gateway's (every process of it)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from bench.common import Context, Row, Section, cpu_seconds, gateway_processes, mib, pss_bytes, rss_bytes
from bench.service import ServiceRun
from clawsvc.config import DEFAULT_PROVIDERS

RSS_TARGET = 30 * 1000 * 1000  # 30 MB (decimal; 28.6 MiB), the stricter reading
CPU_TARGET = 0.1  # percent of one core


def total(pids: list[int], measure: Callable[[int], float]) -> float:
    """Sum over the processes still alive."""
    value = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            value += measure(pid)
    return value


IMPORTS = {
    "python": "pass",
    "libraries": "import yaml, websocket, tenacity, sdnotify",
    "modules": "import clawsvc.service.run",  # all `clawsvc run` imports; never keyring (a child process asks it)
}


def import_rss(code: str) -> int:
    """RSS of a fresh interpreter after running `code` (what an import costs before any work)."""
    probe = f"{code}\nimport os\nprint(int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE'))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout.split()[-1])


def run(ctx: Context) -> Section:
    window = ctx.reps(60, 10)
    settle = ctx.reps(10, 2)
    pause = threading.Event()
    # the default providers: a stock install asks the keyring for their keys (which loads its backends)
    with ServiceRun(ctx.backend(), {"providers": list(DEFAULT_PROVIDERS)}) as run:
        run.start()
        run.wait_ready()
        pause.wait(settle)  # let the gateway's post-start work (catalog refresh, first events) pass
        gateway = gateway_processes(run.state_dir)
        mine0, gw0, t0 = cpu_seconds(run.pid), total(gateway, cpu_seconds), time.monotonic()
        pause.wait(window)
        mine1, gw1, t1 = cpu_seconds(run.pid), total(gateway, cpu_seconds), time.monotonic()
        rss, pss = rss_bytes(run.pid), pss_bytes(run.pid)
        gw_rss = total(gateway, rss_bytes)
    elapsed = t1 - t0
    cpu, gw_cpu = 100 * (mine1 - mine0) / elapsed, 100 * (gw1 - gw0) / elapsed
    section = Section("footprint", f"Footprint (idle, {elapsed:.0f} s window, {ctx.backend().version})")
    base = {name: import_rss(code) for name, code in IMPORTS.items()}
    section.add(Row("RSS", mib(rss), f"{mib(gw_rss)} gateway ({len(gateway)} processes)",
                    f"{rss / gw_rss:.1%} of it", "<= 30 MB", rss <= RSS_TARGET),
                why_missed=f"{mib(base['modules'])} of it is there before clawsvc does any work (the import rows): "
                           f"the interpreter {mib(base['python'])}, PyYAML, websocket-client (with ssl and hashlib), "
                           f"tenacity and sdnotify {mib(base['libraries'] - base['python'])}, clawsvc's own modules "
                           f"{mib(base['modules'] - base['libraries'])}; the rest is what it allocates while running "
                           "(threads' stacks, buffers, the event history).")
    if pss is not None:
        section.add(Row("  PSS (shared pages split)", mib(pss)))
    section.add(Row("  fresh python, nothing imported", mib(base["python"])))
    section.add(Row("  + PyYAML, websocket-client, tenacity, sdnotify", mib(base["libraries"])))
    section.add(Row("  + all that `clawsvc run` imports (never keyring)", mib(base["modules"])))
    section.add(Row("idle CPU", f"{cpu:.3f} %", f"{gw_cpu:.2f} % gateway", "", f"<= {CPU_TARGET} %",
                     cpu <= CPU_TARGET),
                why_missed="health checks and WebSocket pings every 30 s, plus the watchdog/deadline wake-ups.")
    section.notes.append(f"CPU is utime+stime from /proc over the window after a {settle} s settle, as % of one "
                         f"core ({mine1 - mine0:.2f} s of CPU for clawsvc, {gw1 - gw0:.2f} s for the gateway); "
                         "defaults for health.interval and connection.ping_interval (30 s) and for providers (so "
                         "the keyring is asked, as on a stock install). RSS target read as 30 x 10^6 bytes. The "
                         "import rows are fresh interpreters that import the same modules and report their RSS.")
    return section
