"""`clawsvc restart-gateway` on an idle gateway: the gateway's own safe restart (in its own process) against the
kill-and-respawn path (`--force`), interleaved in one clawsvc run, timed from sd_notify STATUS messages: from the
request to STATUS running again, and the downtime (the first STATUS that is not running to the next running)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.common import Context, Row, Section, median, ms, spread
from bench.service import ServiceRun, running_pid, status


@dataclass(frozen=True)
class Restart:
    mode: str
    usable: float    # request → STATUS running again (clawsvc's "up": /startupz started + hello-ok)
    down: float      # the first STATUS not running → running again
    same_pid: bool


def restart(run: ServiceRun, mode: str) -> Restart:
    pid = run.request("status")["pid"]
    mark = run.notify.mark()
    t0 = time.monotonic()
    answer = run.request("restart-gateway", mode=mode)
    assert answer.get("mode") == mode, answer
    down = run.wait_for(lambda d: status(d) != "" and not status(d).startswith("running"), start=mark)
    up = run.wait_for(lambda d: d.at > down.at and running_pid(d) is not None, start=mark)
    return Restart(mode, up.at - t0, up.at - down.at, running_pid(up) == pid)


def run(ctx: Context) -> Section:
    reps = ctx.reps(3, 1)
    results: list[Restart] = []
    with ServiceRun(ctx.backend(), {"reconnect": {"stable_after": 0}}) as service:
        service.start()
        service.wait_ready()
        for _ in range(reps):
            for mode in ("safe", "force"):
                results.append(restart(service, mode))
    safe = [r for r in results if r.mode == "safe"]
    force = [r for r in results if r.mode == "force"]
    section = Section("restarts", f"restart-gateway on an idle gateway ({reps}x each, interleaved)")
    usable_safe, usable_force = median([r.usable for r in safe]), median([r.usable for r in force])
    section.add(Row("restart-gateway (safe, same process) → usable (median)", ms(usable_safe),
                    f"--force (new process) {ms(usable_force)}", f"{usable_safe / usable_force:.2f}x"))
    section.add(Row("  safe: downtime", ms(median([r.down for r in safe])), spread([r.down for r in safe])))
    section.add(Row("  --force: downtime", ms(median([r.down for r in force])), spread([r.down for r in force])))
    section.add(Row("  safe kept the gateway's pid", f"{sum(r.same_pid for r in safe)}/{len(safe)}",
                    f"--force: {sum(r.same_pid for r in force)}/{len(force)}"))
    section.notes.append(
        "One clawsvc run, the gateway idle; rounds alternate safe and --force. \"usable\" is STATUS=running again, "
        "which clawsvc sends once the gateway owns its listener, /startupz says started and a hello-ok answered. "
        "Safe: gateway.restart.request, the gateway restarts in its own process (OPENCLAW_NO_RESPAWN=1); --force: "
        "SIGTERM, a new gateway spawned once it exited (a cold start, with the compile cache warm).")
    return section
