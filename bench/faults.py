"""Crash recovery (SIGKILL of the gateway) and hang detection (SIGSTOP), timed from sd_notify STATUS messages."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from bench import startup
from bench.common import Context, Row, Section, median, ms, signed_ms, spread
from bench.notify import Notice
from bench.service import ServiceRun, running_pid, spawned_pid

CRASH_TARGET = 0.100
# Short limits so a hang is found in seconds; stable_after 0 makes every crash a "first" crash (restart at once).
HANG_HEALTH = {"interval": 1.0, "timeout": 1.0, "failures": 3}
HANG_STOP_TIMEOUT = 2.0


@dataclass(frozen=True)
class Recovery:
    noticed: float   # fault → clawsvc leaves "running" (STATUS reconnecting)
    spawned: float   # fault → new gateway pid exists
    running: float   # fault → STATUS running with the new pid
    decided: float | None = None  # fault → clawsvc's log says it replaces the gateway (hangs only)


def is_reconnecting(notice: Notice) -> bool:
    return (notice.status or "").startswith("reconnecting")


def inflict(run: ServiceRun, pid: int, sig: signal.Signals) -> tuple[Recovery, int]:
    """Send `sig` to the gateway's main process and time clawsvc's way back to running; returns the new pid."""
    mark = run.notify.mark()
    wall, t0 = time.time(), time.monotonic()
    os.kill(pid, sig)
    noticed = run.wait_for(is_reconnecting, start=mark)
    spawned = run.wait_for(lambda n: spawned_pid(n) not in (None, pid), start=mark)
    running = run.wait_running(mark, not_pid=pid)
    new_pid = running_pid(running)
    assert new_pid is not None
    decided = run.log_time(rf"replacing gateway pid {pid}\b", wall)
    return Recovery(noticed.at - t0, spawned.at - t0, running.at - t0,
                    None if decided is None else decided - wall), new_pid


def cold_starts(ctx: Context) -> list[float]:
    """The reference cold start (spawn → hello-ok, 10 ms prober) from this run; measured now if not yet."""
    if not ctx.cold_starts:
        ctx.cold_starts.append(startup.reference_start(ctx).hello)
    return ctx.cold_starts


def crash(ctx: Context) -> Section:
    reps = ctx.reps(3, 2)
    recoveries: list[Recovery] = []
    with ServiceRun(ctx.backend(), {"reconnect": {"stable_after": 0}}) as run:
        run.start()
        pid = running_pid(run.wait_ready())
        assert pid is not None
        for _ in range(reps):
            recovery, pid = inflict(run, pid, signal.SIGKILL)
            recoveries.append(recovery)
    cold = median(cold_starts(ctx))
    recovered = median([r.running for r in recoveries])
    overhead = recovered - cold
    respawn = median([r.spawned for r in recoveries])
    section = Section("crash", f"Crash recovery (SIGKILL of the gateway, {reps}x, every one a first crash)")
    section.add(Row("SIGKILL → running again (median)", ms(recovered), ms(cold) + " cold start",
                    signed_ms(overhead), "<= +100 ms", overhead <= CRASH_TARGET),
                why_missed=f"the new gateway is spawned {ms(respawn)} after the kill (exit noticed after "
                           f"{ms(median([r.noticed for r in recoveries]))}); the rest is the readiness lag of a "
                           "normal start (see Start overhead).")
    section.add(Row("  SIGKILL → exit noticed", ms(median([r.noticed for r in recoveries]))))
    section.add(Row("  SIGKILL → new gateway spawned", ms(respawn)))
    section.add(Row("  spawned → running", ms(median([r.running - r.spawned for r in recoveries])), ms(cold),
                    signed_ms(median([r.running - r.spawned for r in recoveries]) - cold)))
    section.notes.append(f"Recoveries: {spread([r.running for r in recoveries])}; reference cold starts "
                         f"(10 ms prober, same run): {spread(cold_starts(ctx))}. reconnect.stable_after is 0 so "
                         "that each kill is treated as a first crash (restart without backoff).")
    return section


def hang(ctx: Context) -> Section:
    reps = ctx.reps(2, 1)
    health = HANG_HEALTH
    overrides = {"health": health, "reconnect": {"stable_after": 0},
                 "gateway": {"stop_timeout": HANG_STOP_TIMEOUT}}
    results: list[Recovery] = []
    with ServiceRun(ctx.backend(), overrides) as run:
        run.start()
        pid = running_pid(run.wait_ready())
        assert pid is not None
        for _ in range(reps):
            recovery, pid = inflict(run, pid, signal.SIGSTOP)
            results.append(recovery)
    fails, interval, timeout = health["failures"], health["interval"], health["timeout"]
    low = fails * timeout + (fails - 1) * interval
    high = low + interval
    decided = [r.decided for r in results if r.decided is not None]
    detected = median(decided) if decided else median([r.noticed for r in results])
    section = Section("hang", f"Hang detection (SIGSTOP of the gateway's main process, {reps}x)")
    section.add(Row("SIGSTOP → hang detected (median)", ms(detected), f"{low:g}..{high:g} s by the limits",
                    signed_ms(detected - high) + " vs bound", f"<= {high:g} s", detected <= high + 0.1),
                why_missed="detection took longer than the configured health limits allow.")
    noticed = median([r.noticed for r in results])
    section.add(Row("  SIGSTOP → STATUS reconnecting", ms(noticed), ms(detected) + " detected",
                    signed_ms(noticed - detected)))
    stop = median([r.spawned - r.noticed for r in results])
    section.add(Row("  STATUS reconnecting → new gateway spawned", ms(stop), f"stop_timeout {HANG_STOP_TIMEOUT:g} s",
                    signed_ms(stop - HANG_STOP_TIMEOUT)))
    section.add(Row("  SIGSTOP → running again", ms(median([r.running for r in results]))))
    section.notes.append(
        f"Limits for this run: health.interval {interval:g} s, health.timeout {timeout:g} s, health.failures "
        f"{fails}, gateway.stop_timeout {HANG_STOP_TIMEOUT:g} s; connection.ping_interval 30 s (pong timeout "
        f"10 s) and tick silence (tick_grace 2 x tickIntervalMs 30 s) are slower paths. Expected detection = "
        f"failures x timeout + (failures - 1) x interval, plus up to one interval of phase; \"detected\" is the "
        f"time of clawsvc's \"replacing gateway\" log line. A stopped process ignores SIGTERM, so the "
        f"replacement waits the full stop_timeout before SIGKILL.")
    if noticed - detected > 1.0:
        section.notes.append(
            f"Between the decision and STATUS=reconnecting the supervisor loop is blocked "
            f"{ms(noticed - detected)}: Supervisor._replace → _drop_connection → GatewayConnection.close() waits "
            "2 x CLOSE_GRACE for a close answer a frozen peer never sends (websocket-client's WebSocket.abort() "
            "does nothing once send_close() has cleared `connected`, so the second wait is not cut short). "
            "Watchdog pings, signals and control-socket restarts wait meanwhile.")
    return section
