"""Replays of the pure state machine (clawsvc/service/machine.py): scripts of (t, message) in, (state, effects)
out. No threads, no sleeps, no log text: the expected outcomes are written here, never read from the table."""

from __future__ import annotations

import ast
import importlib
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from clawsvc import exitcodes
from clawsvc.config import Config, GatewayConfig, HealthConfig, MemoryConfig, ReconnectConfig
from clawsvc.exits import ExitCause, ExitKind
from clawsvc.service import machine
from clawsvc.service.backoff import restart_delay
from clawsvc.service.effects import (
    AskRestart,
    CloseLink,
    Connect,
    Emit,
    LoadConfig,
    Log,
    Notify,
    NotifyKind,
    Probe,
    Publish,
    Reply,
    StopProcess,
)
from clawsvc.service.lifecycle import NOT_OWNED
from clawsvc.service.messages import (
    ConfigFailed,
    ConfigLoaded,
    DrainNoticed,
    ExitInfo,
    GatewayEventSeen,
    HandoffChecked,
    HandshakeDone,
    HandshakeFailed,
    HandshakeKind,
    HealthChecked,
    LinkLost,
    MemorySampled,
    PortFree,
    PortTaken,
    ProcessExited,
    ReadinessChecked,
    RestartAnswered,
    RestartCause,
    RestartMode,
    RestartRequested,
    SignalReceived,
    Spawned,
    SpawnFailed,
    TimerFired,
    TimerKind,
)
from clawsvc.service.moves import FORCE_GRACE, SAFE_RESTART_BOUND
from clawsvc.service.states import (
    Adopting,
    AwaitingHello,
    BackingOff,
    HandingOff,
    LockedOut,
    MState,
    Probing,
    Reconnecting,
    Replacing,
    Restarting,
    Running,
    Spawning,
    Stopped,
    Stopping,
    next_deadline,
    phase,
)
from clawsvc.service.status import State, status_line

TOKEN = "t" * 32
CONFIG = Config(gateway=GatewayConfig(start_timeout=20.0),
                health=HealthConfig(interval=30.0, timeout=5.0, failures=2),
                reconnect=ReconnectConfig(base_delay=1.0, max_delay=8.0, max_attempts=3, stable_after=60.0))
CRASH = ExitInfo(1, None)
PID = 100


def boot(config: Config = CONFIG, watchdog: float | None = None) -> MState:
    state, _ = machine.start(config, TOKEN, {}, 0.0, watchdog, seed=7)
    return state


def replay(state: MState, script: list[tuple[float, Any]]) -> tuple[MState, list[list[Any]]]:
    """Feed the script; the state at the end and the effects of every step."""
    out = []
    for now, message in script:
        state, effects = machine.step(state, message, now)
        out.append(effects)
    return state, out


def actions(effects: list[Any]) -> list[str]:
    """The effects a reader checks, in order; log lines and published views left out."""
    names = []
    for effect in effects:
        if isinstance(effect, Log | Publish):
            continue
        if isinstance(effect, Emit):
            names.append(f"{'Emit' if effect.source == 'service' else 'Gateway'}:{effect.name}")
        elif isinstance(effect, Notify):
            names.append(f"Notify:{effect.kind.value}")
        elif hasattr(effect, "pid") and not hasattr(effect, "gen"):
            names.append(f"{type(effect).__name__}:{effect.pid}")
        elif type(effect).__name__ in ("CloseLink", "CheckHealth"):
            names.append(f"{type(effect).__name__}:{effect.link}")
        elif isinstance(effect, Probe):
            names.append(f"Probe:{effect.gen}")
        else:
            names.append(type(effect).__name__)
    return names


UP = [(1.0, PortFree(1)), (2.0, Spawned(1, PID)), (3.0, HandshakeDone(1, 1, "v1", 4))]
FIXTURES: dict[str, list[tuple[float, Any]]] = {
    "probing": [],
    "adopting": [(1.0, PortTaken(1, "pid 9 (node)"))],
    "spawning": [(1.0, PortFree(1))],
    "awaiting": UP[:2],
    "running": UP,
    "running_adopted": [(1.0, PortTaken(1, "pid 9 (node)")), (2.0, HandshakeDone(1, 1, "v1", 4))],
    "reconnecting": [*UP, (4.0, LinkLost(1, 1, 1006, "gone"))],
    "replacing": [*UP[:2], (4.0, HandshakeFailed(1, HandshakeKind.TRANSPORT, "refused", True, 20.0))],
    "restarting": [*UP, (4.0, RestartRequested("test"))],
    "restarting_spawn": [(1.0, PortFree(1)), (2.0, RestartRequested("test"))],
    "backing_off": [*UP, (4.0, ProcessExited(1, PID, CRASH))],
    "stopping": [*UP, (4.0, SignalReceived(signal.SIGTERM))],
    "stopping_spawn": [(1.0, PortFree(1)), (2.0, SignalReceived(signal.SIGTERM))],
    "restart_asked": [*UP, (4.0, RestartRequested("test", None, RestartMode.SAFE))],
    "handing_off": [*UP, (4.0, ProcessExited(1, PID, ExitInfo(0, None)))],
    "reconnecting_adopted": [(1.0, PortTaken(1, "pid 9 (node)")), (2.0, HandshakeDone(1, 1, "v1", 4)),
                             (4.0, LinkLost(1, 1, 1006, "gone"))],
    # its openclaw.json got a token of its own: the gateway closes our link with 4001, then rejects our token
    "locked_out": [*UP, (4.0, LinkLost(1, 1, 4001, "gateway auth changed")),
                   (5.0, HandshakeFailed(1, HandshakeKind.AUTH, "token mismatch"))],
}
# a gateway that restarts itself as a fresh process (exit 0 and a handoff), as gateway.env can ask
FRESH = replace(CONFIG, gateway=replace(CONFIG.gateway, env={"OPENCLAW_NO_RESPAWN": "0"}))
FIXTURE_CONFIG = {"handing_off": FRESH}
TYPES = {"probing": Probing, "adopting": Adopting, "spawning": Spawning, "awaiting": AwaitingHello,
         "running": Running, "running_adopted": Running, "reconnecting": Reconnecting, "replacing": Replacing,
         "restarting": Restarting, "restarting_spawn": Restarting, "backing_off": BackingOff,
         "stopping": Stopping, "stopping_spawn": Stopping, "restart_asked": Running, "handing_off": HandingOff,
         "reconnecting_adopted": Reconnecting, "locked_out": LockedOut}


def at(name: str, config: Config | None = None) -> MState:
    state, _ = replay(boot(config or FIXTURE_CONFIG.get(name, CONFIG)), FIXTURES[name])
    assert type(state) is TYPES[name], f"fixture {name} reached {type(state).__name__}"
    return state


T = 10.0
ST, READY = "Notify:status", "Notify:ready"
# the events: the phase changed (always after the handler's own events), clawsvc gives up, the gateway's exit
STATE, ERR, EXITED, RESTART, ASKED = "Emit:state", "Emit:error", "Emit:gateway.exited", "Emit:restart", \
    "Emit:restart.requested"
AUTH = "Emit:auth.rejected"
# (fixture, message, expected state type, expected actions): one row per specific TRANSITIONS entry
ROWS: list[tuple[str, Any, type, list[str]]] = [
    ("probing", PortFree(1), Spawning, ["Spawn"]),
    ("probing", PortTaken(1, "pid 9"), Adopting, ["Connect"]),
    ("spawning", Spawned(1, PID), AwaitingHello, [ST, "Emit:gateway.spawned", "Connect"]),
    ("spawning", SpawnFailed(1, "no node"), Stopped, [ST, ERR, "AbortConnect", STATE]),
    ("restarting_spawn", Spawned(1, PID), Restarting, [ST, "Emit:gateway.spawned", f"StopProcess:{PID}"]),
    ("restarting_spawn", SpawnFailed(1, "no node"), Stopped, [ST, ERR, "AbortConnect", STATE]),
    ("stopping_spawn", Spawned(1, PID), Stopping, [ST, "Emit:gateway.spawned", f"StopProcess:{PID}"]),
    ("stopping_spawn", SpawnFailed(1, "no node"), Stopped, [ST, STATE]),
    ("adopting", HandshakeDone(1, 1, "v1", 4), Running, [READY, "Emit:ready", STATE]),
    ("awaiting", HandshakeDone(1, 1, "v1", 4), Running, [READY, "Emit:ready", STATE]),
    ("reconnecting", HandshakeDone(1, 2, "v1", 4), Running, [ST, STATE]),
    ("adopting", HandshakeFailed(1, HandshakeKind.OTHER, "not a gateway"), Stopped,
     [ST, ERR, "AbortConnect", STATE]),
    ("awaiting", HandshakeFailed(1, HandshakeKind.TRANSPORT, "refused", True, 20.0), Replacing,
     [ST, "Emit:gateway.replaced", "AbortConnect", f"StopProcess:{PID}", STATE]),
    ("reconnecting", HandshakeFailed(1, HandshakeKind.AUTH, "token mismatch"), LockedOut, [ST, AUTH]),
    ("awaiting", HandshakeFailed(1, HandshakeKind.AUTH, "token mismatch"), LockedOut, [READY, AUTH, STATE]),
    ("reconnecting_adopted", HandshakeFailed(1, HandshakeKind.AUTH, "token mismatch"), Stopped,
     [ST, ERR, "AbortConnect", STATE]),
    ("locked_out", TimerFired(TimerKind.AUTH), Reconnecting, ["Connect"]),
    ("locked_out", ProcessExited(1, PID, CRASH), BackingOff, [ST, EXITED, "AbortConnect", RESTART]),
    ("locked_out", RestartRequested("r"), Restarting, [ST, ASKED, "AbortConnect", f"StopProcess:{PID}", STATE]),
    ("running", GatewayEventSeen(1, 1, "shutdown", {"reason": "update", "restartExpectedMs": 1500}), Reconnecting,
     [ST, "Gateway:shutdown", "CloseLink:1", "Connect", STATE]),
    ("running", LinkLost(1, 1, 1006, "gone"), Reconnecting, [ST, "CloseLink:1", "Connect", STATE]),
    ("running", TimerFired(TimerKind.HEALTH), Running, ["CheckHealth:1"]),
    ("running", HealthChecked(1, 1, False, "timeout"), Running, ["Emit:health.failed"]),
    ("running", ReadinessChecked(1, 1, False, ("channel:telegram",)), Running, [ST, "Emit:readiness"]),
    ("running", MemorySampled(1, 1, PID, 500 << 20, "rss"), Running, []),
    ("awaiting", ProcessExited(1, PID, CRASH), BackingOff, [ST, EXITED, "AbortConnect", RESTART, STATE]),
    ("running", ProcessExited(1, PID, CRASH), BackingOff, [ST, EXITED, "CloseLink:1", "AbortConnect", RESTART, STATE]),
    ("reconnecting", ProcessExited(1, PID, CRASH), BackingOff, [ST, EXITED, "AbortConnect", RESTART]),
    ("replacing", ProcessExited(1, PID, ExitInfo(None, 15)), BackingOff, [ST, EXITED, "AbortConnect", RESTART]),
    ("restarting", ProcessExited(1, PID, ExitInfo(0, None)), Probing, [ST, EXITED, "CloseLink:1", "Probe:2"]),
    ("stopping", ProcessExited(1, PID, ExitInfo(0, None)), Stopped, [ST, EXITED, "CloseLink:1", STATE]),
    ("backing_off", TimerFired(TimerKind.BACKOFF), Probing, [ST, "Probe:2", STATE]),
    ("probing", RestartRequested("r"), Probing, [ASKED, "AbortConnect", "Probe:2"]),
    ("adopting", RestartRequested("r"), Probing, [ASKED, "AbortConnect", "Probe:2"]),
    ("spawning", RestartRequested("r"), Restarting, [ST, ASKED]),
    ("awaiting", RestartRequested("r"), Restarting, [ST, ASKED, "AbortConnect", f"StopProcess:{PID}"]),
    ("running", RestartRequested("r"), Restarting, [ST, ASKED, "AbortConnect", f"StopProcess:{PID}", STATE]),
    ("running", RestartRequested("r", None, RestartMode.FORCE), Restarting,
     [ST, ASKED, "AbortConnect", "CloseLink:1", f"StopProcess:{PID}", STATE]),
    ("running", RestartRequested("r", None, RestartMode.SAFE), Running, [ST, ASKED, "AskRestart"]),
    ("restart_asked", RestartAnswered(1, 1, True), Running, []),
    ("restart_asked", RestartAnswered(1, 1, False, "unknown method"), Restarting,
     [ST, "AbortConnect", f"StopProcess:{PID}", STATE]),
    ("restart_asked", TimerFired(TimerKind.RESTART), Restarting, [ST, "AbortConnect", f"StopProcess:{PID}", STATE]),
    ("restarting", GatewayEventSeen(1, 1, "chat", {"state": "final"}, 9), Restarting, ["Gateway:chat"]),
    ("restarting", LinkLost(1, 1, 1012, "service restart"), Restarting, []),
    ("stopping", GatewayEventSeen(1, 1, "chat", {"state": "final"}, 9), Stopping, ["Gateway:chat"]),
    ("stopping", LinkLost(1, 1, 1012, "service restart"), Stopping, []),
    ("running", DrainNoticed(1, "waiting for pendingReplies=1"), Running, []),
    ("handing_off", HandoffChecked(1, PID, True, "accepted"), Probing, [ST, "Probe:2"]),
    ("restart_asked", DrainNoticed(1, "waiting for pendingReplies=1"), Running, [ST]),
    ("restarting", DrainNoticed(1, "waiting for pendingReplies=1"), Restarting, [ST]),
    ("stopping", DrainNoticed(1, "waiting for pendingReplies=1"), Stopping, [ST]),
    ("reconnecting", RestartRequested("r"), Restarting, [ST, ASKED, "AbortConnect", f"StopProcess:{PID}", STATE]),
    ("replacing", RestartRequested("r"), Restarting, [ST, ASKED, "AbortConnect", f"StopProcess:{PID}", STATE]),
    ("restarting", RestartRequested("r"), Restarting, [ASKED]),
    ("backing_off", RestartRequested("r"), Probing, [ST, ASKED, "AbortConnect", "Probe:2", STATE]),
    ("handing_off", RestartRequested("r"), Probing, [ST, ASKED, "AbortConnect", "Probe:2"]),
]
STOP = "Notify:stopping"
# the rows every state has: a stop, a reload's outcome, the watchdog and extend-timeout timers
SIGTERM_ROWS: dict[str, tuple[type, list[str]]] = {
    "probing": (Stopped, [ST, STOP, "AbortConnect", STATE]),
    "adopting": (Stopped, [ST, STOP, "AbortConnect", STATE]),
    "spawning": (Stopping, [ST, STOP, "AbortConnect", STATE]),
    "awaiting": (Stopping, [ST, STOP, "AbortConnect", f"StopProcess:{PID}", STATE]),
    "running": (Stopping, [ST, STOP, "AbortConnect", f"StopProcess:{PID}", STATE]),
    "reconnecting": (Stopping, [ST, STOP, "AbortConnect", f"StopProcess:{PID}", STATE]),
    "replacing": (Stopping, [ST, STOP, "AbortConnect", f"StopProcess:{PID}", STATE]),
    "restarting": (Stopping, [ST, STOP, "AbortConnect", f"StopProcess:{PID}", STATE]),
    "backing_off": (Stopped, [ST, STOP, "AbortConnect", STATE]),
    "stopping": (Stopping, []),
    "handing_off": (Stopped, [ST, STOP, "AbortConnect", STATE]),
    "locked_out": (Stopping, [ST, STOP, "AbortConnect", f"StopProcess:{PID}", STATE]),
}
READY_SENT = {"running", "reconnecting", "restarting", "backing_off", "stopping", "handing_off", "locked_out"}
STILL_STARTING = {"probing", "adopting", "spawning", "awaiting", "replacing"}  # extend-timeout still running


def _row_key(state: MState, message: Any) -> tuple[type, Any]:
    return type(state), message.kind if isinstance(message, TimerFired) else type(message)


ALL_ROWS = [
    *ROWS,
    *[(name, SignalReceived(signal.SIGTERM), kind, expected) for name, (kind, expected) in SIGTERM_ROWS.items()],
    *[(name, ConfigLoaded(FIXTURE_CONFIG.get(name, CONFIG), TOKEN, {}), TYPES[name],
       ["ApplyConfig", "Emit:reload", READY if name in READY_SENT else ST]) for name in SIGTERM_ROWS],
    *[(name, ConfigFailed("bad yaml"), TYPES[name], ["Emit:reload", READY if name in READY_SENT else ST])
      for name in SIGTERM_ROWS],
    *[(name, TimerFired(TimerKind.WATCHDOG), TYPES[name], ["Notify:watchdog"]) for name in SIGTERM_ROWS],
    *[(name, TimerFired(TimerKind.EXTEND), TYPES[name], ["Notify:extend-timeout"] if name in STILL_STARTING else [])
      for name in SIGTERM_ROWS],
]


@pytest.mark.parametrize(("name", "message", "kind", "expected"), ALL_ROWS,
                         ids=[f"{row[0]}-{type(row[1]).__name__}-{i}" for i, row in enumerate(ALL_ROWS)])
def test_table_walk(name: str, message: Any, kind: type, expected: list[str]) -> None:
    state, effects = machine.step(at(name), message, T)
    assert type(state) is kind
    assert actions(effects) == expected


def test_the_walk_covers_every_row_of_the_table() -> None:
    walked = {_row_key(at(name), message) for name, message, _, _ in ALL_ROWS}
    walked.add((Running, TimerKind.STABLE))  # walked in test_a_stable_run_resets_the_attempts
    assert walked == set(machine.TRANSITIONS)


def test_a_message_a_state_does_not_take_changes_nothing() -> None:
    for name in FIXTURES:
        state = at(name)
        for message in (PortFree(1), LinkLost(1, 1, None, ""), HealthChecked(1, 1, True, None)):
            if _row_key(state, message) in machine.TRANSITIONS:
                continue
            after, effects = machine.step(state, message, T)
            assert after == state and actions(effects) == [], (name, message)


def test_an_unwanted_hello_ok_is_closed() -> None:
    for name in ("probing", "spawning", "running", "restarting", "backing_off", "stopping"):
        state, effects = machine.step(at(name), HandshakeDone(1, 42, "v1", 4), T)
        assert type(state) is TYPES[name] and actions(effects) == ["CloseLink:42"], name


def test_messages_of_an_older_generation_are_dropped() -> None:
    state, _ = replay(at("restarting"), [(5.0, ProcessExited(1, PID, ExitInfo(0, None)))])
    assert state.book.gen == 2
    for message in (PortFree(1), ProcessExited(1, PID, CRASH), LinkLost(1, 1, 1006, ""), Spawned(1, 7)):
        assert machine.step(state, message, T)[0] == state
    assert actions(machine.step(state, HandshakeDone(1, 5, "v1", 4), T)[1]) == ["CloseLink:5"]
    assert type(machine.step(state, PortFree(2), T)[0]) is Spawning


def test_a_handler_going_somewhere_illegal_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad(state: MState, message: Any, now: float) -> tuple[MState, list[Any]]:
        return Running(state.book, 1, 1, None), []

    monkeypatch.setitem(machine.TRANSITIONS, (Probing, PortFree), bad)
    with pytest.raises(machine.IllegalMove):
        machine.step(boot(), PortFree(1), 1.0)


# ---------------------------------------------------------------- histories


def crash_and_come_back(state: MState, t: float) -> tuple[MState, float]:
    """Our gateway crashes at t; the machine backs off, probes, spawns; the new one answers."""
    state, _ = machine.step(state, ProcessExited(state.book.gen, PID, CRASH), t)
    assert isinstance(state, BackingOff)
    t = state.until
    gen = state.book.gen + 1
    state, _ = replay(state, [(t, TimerFired(TimerKind.BACKOFF)), (t, PortFree(gen)), (t, Spawned(gen, PID)),
                              (t + 1, HandshakeDone(gen, 9, "v", 4))])
    return state, t + 1


def test_crash_loop_gives_up_with_exit_1() -> None:
    state, t = at("running"), 3.0
    waits = []
    for _ in range(3):
        state, _ = machine.step(state, ProcessExited(state.book.gen, PID, CRASH), t)
        assert isinstance(state, BackingOff)
        waits.append(state.until - t)
        t = state.until
        state, _ = replay(state, [(t, TimerFired(TimerKind.BACKOFF)), (t, PortFree(state.book.gen + 1)),
                                  (t, Spawned(state.book.gen + 1, PID))])
    state, effects = machine.step(state, ProcessExited(state.book.gen, PID, CRASH), t + 1)
    assert isinstance(state, Stopped) and phase(state) is State.ERROR
    assert state.book.exit_code == exitcodes.FAIL and state.book.attempts == 4
    assert waits[0] == 0.0 and 0.0 <= waits[1] <= 1.0 and 0.0 <= waits[2] <= 2.0
    assert "Probe" not in " ".join(actions(effects)) and "Spawn" not in actions(effects)


def test_planned_restart_racing_a_crash_is_not_a_failure() -> None:
    state, _ = replay(at("restarting"), [(5.0, ProcessExited(1, PID, CRASH))])
    assert isinstance(state, Probing) and state.book.gen == 2
    assert state.book.attempts == 0 and state.book.restarts == 1


def test_a_restart_asked_while_backing_off_starts_at_once() -> None:
    state, _ = replay(at("backing_off"), [(5.0, RestartRequested("now"))])
    assert isinstance(state, Probing) and state.book.gen == 2 and state.book.restarts == 2


def test_a_late_handshake_failure_after_a_crash_is_not_a_second_failure() -> None:
    state, _ = replay(at("backing_off"), [(5.0, HandshakeFailed(1, HandshakeKind.TRANSPORT, "refused"))])
    assert isinstance(state, BackingOff) and state.book.attempts == 1


def changed_port() -> Config:
    return replace(CONFIG, gateway=replace(CONFIG.gateway, port=19999))


@pytest.mark.parametrize("name", ["spawning", "awaiting"])
def test_reload_during_start_restarts_with_the_new_config(name: str) -> None:
    state, steps = replay(at(name), [(5.0, ConfigLoaded(changed_port(), TOKEN, {}))])
    assert isinstance(state, Restarting) and state.book.config.gateway.port == 19999
    script = [] if state.pid is not None else [(6.0, Spawned(1, PID))]
    state, steps = replay(state, [*script, (7.0, ProcessExited(1, PID, ExitInfo(0, None)))])
    assert isinstance(state, Probing)
    assert [e for e in steps[-1] if isinstance(e, Probe)] == [Probe(2, 19999)]


def test_a_new_token_on_reload_restarts_the_gateway_with_it() -> None:
    state, steps = replay(at("running"), [(5.0, ConfigLoaded(CONFIG, "n" * 32, {}))])
    assert isinstance(state, Restarting) and state.book.token == "n" * 32
    assert f"StopProcess:{PID}" in actions(steps[0])


def test_reload_failure_keeps_the_old_config() -> None:
    state, steps = replay(at("running"), [(5.0, SignalReceived(signal.SIGHUP)), (6.0, ConfigFailed("bad: line 3"))])
    assert actions(steps[0]) == ["Notify:reloading", "LoadConfig"]
    assert [e for e in steps[0] if isinstance(e, LoadConfig)] == [LoadConfig(CONFIG.source)]
    assert isinstance(state, Running) and state.book.config is CONFIG and state.pid == PID
    ready = [e for e in steps[1] if isinstance(e, Notify)]
    assert ready == [Notify(NotifyKind.READY, suffix=" (reload failed: bad: line 3)")]


def test_reload_before_ready_sends_no_reloading() -> None:
    _, steps = replay(at("awaiting"), [(5.0, SignalReceived(signal.SIGHUP))])
    assert actions(steps[0]) == ["LoadConfig"]


def test_shutdown_with_restart_expected_waits_instead_of_spawning() -> None:
    event = GatewayEventSeen(1, 1, "shutdown", {"reason": "update", "restartExpectedMs": 1500})
    state, steps = replay(at("running"), [(5.0, event), (7.0, HandshakeDone(1, 2, "v2", 4))])
    connect = [e for e in steps[0] if isinstance(e, Connect)]
    assert connect[0].spawned == PID and not connect[0].adopting and connect[0].timeout == 1.5 + 20.0
    assert isinstance(state, Running) and state.pid == PID and state.link == 2 and state.book.gen == 1
    assert not [a for step in steps for a in actions(step) if a in ("Spawn", "StopProcess:100")]


def test_shutdown_without_restart_expected_only_logs_and_passes_it_on() -> None:
    state, steps = replay(at("running"), [(5.0, GatewayEventSeen(1, 1, "shutdown", {"reason": "bye"}))])
    assert isinstance(state, Running) and actions(steps[0]) == ["Gateway:shutdown"]


@pytest.mark.parametrize("name", list(SIGTERM_ROWS))
def test_stop_during_every_state_ends_stopped_with_exit_0(name: str) -> None:
    state, _ = machine.step(at(name), SignalReceived(signal.SIGTERM), T)
    if isinstance(state, Stopping) and state.pid is None:
        state, _ = machine.step(state, Spawned(1, PID), T)
    if isinstance(state, Stopping):
        state, _ = machine.step(state, ProcessExited(state.book.gen, PID, ExitInfo(0, None)), T)
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.OK
    assert phase(state) is State.STOPPED and next_deadline(state) is None


def test_exit_78_from_the_gateway_ends_clawsvc_with_78() -> None:
    state, steps = replay(at("running"), [(5.0, ProcessExited(1, PID, ExitInfo(78, None)))])
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.CONFIG
    assert "Probe:2" not in actions(steps[0]) and phase(state) is State.ERROR


@pytest.mark.parametrize(("kind", "code"), [(HandshakeKind.PROTOCOL, exitcodes.CONFIG),
                                             (HandshakeKind.UNTRUSTED_PEER, exitcodes.FAIL)])
def test_fatal_handshake_failures_stop_with_their_exit_code(kind: HandshakeKind, code: int) -> None:
    state, steps = replay(at("awaiting"), [(5.0, HandshakeFailed(1, kind, "no")),
                                           (6.0, ProcessExited(1, PID, ExitInfo(None, 15)))])
    assert isinstance(state, Stopped) and state.book.exit_code == code and phase(state) is State.ERROR
    assert f"StopProcess:{PID}" in actions(steps[0])


def test_a_stranger_that_vanishes_before_every_check_exits_1_saying_so() -> None:
    state, _ = replay(boot(), [(1.0, PortTaken(1, "pid 9 (nc)")),
                               (3.0, HandshakeFailed(1, HandshakeKind.PEER_GONE, "gone", True, 1.0))])
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.FAIL
    assert "closed every connection before clawsvc could verify" in (state.book.error or "")
    assert "does not answer as an OpenClaw gateway" not in (state.book.error or "")


def test_a_stranger_on_the_port_without_adopt_existing_exits_1() -> None:
    config = replace(CONFIG, gateway=replace(CONFIG.gateway, adopt_existing=False))
    state, steps = replay(boot(config), [(1.0, PortTaken(1, "pid 9 (nc)"))])
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.FAIL
    assert "Connect" not in actions(steps[0]) and "Spawn" not in actions(steps[0])


def test_health_failures_replace_an_owned_gateway() -> None:
    state, steps = replay(at("running"), [(40.0, HealthChecked(1, 1, False, "timeout")),
                                          (80.0, HealthChecked(1, 1, False, "timeout"))])
    assert isinstance(state, Replacing) and state.pid == PID
    assert actions(steps[1])[-2:] == [f"StopProcess:{PID}", STATE]
    state, _ = replay(state, [(81.0, ProcessExited(1, PID, ExitInfo(None, 15)))])
    assert isinstance(state, BackingOff) and state.book.attempts == 1


def test_health_failures_reconnect_to_an_adopted_gateway() -> None:
    state, steps = replay(at("running_adopted"), [(40.0, HealthChecked(1, 1, False, "timeout")),
                                                  (80.0, HealthChecked(1, 1, False, "timeout"))])
    assert isinstance(state, Reconnecting) and state.pid is None
    connect = [e for e in steps[1] if isinstance(e, Connect)]
    assert connect[0].adopting and connect[0].timeout == 20.0
    assert not [a for a in actions(steps[1]) if a.startswith("StopProcess")]


def test_a_health_answer_for_a_dropped_link_is_ignored() -> None:
    state, _ = replay(at("running"), [(40.0, HealthChecked(1, 99, False, "connection lost"))])
    assert isinstance(state, Running) and state.failures == 0
    state, _ = replay(state, [(41.0, HealthChecked(1, 1, False, "timeout"))])
    assert state.failures == 1


def test_a_lost_link_reconnects_to_the_same_pid() -> None:
    state, steps = replay(at("running"), [(5.0, LinkLost(1, 1, 1006, "gone"))])
    connect = next(e for e in steps[0] if isinstance(e, Connect))
    assert isinstance(state, Reconnecting) and state.pid == PID
    assert connect.spawned == PID and not connect.adopting and connect.timeout == 10.0 * 2


def test_a_lost_link_of_a_dropped_connection_is_ignored() -> None:
    state, steps = replay(at("running"), [(5.0, LinkLost(1, 77, 1006, "gone"))])
    assert isinstance(state, Running) and actions(steps[0]) == []


def test_a_stable_run_resets_the_attempts() -> None:
    state, t = crash_and_come_back(at("running"), 3.0)
    assert isinstance(state, Running) and state.book.attempts == 1
    state, _ = machine.step(state, TimerFired(TimerKind.HEALTH), t + 30.0)  # a check in flight: no health timer
    due = next_deadline(state)
    assert due is not None and due[1] is TimerKind.STABLE and due[0] == t + 60.0
    state, _ = machine.step(state, TimerFired(TimerKind.STABLE), due[0])
    assert state.book.attempts == 0
    state, _ = machine.step(state, ProcessExited(state.book.gen, PID, CRASH), due[0] + 1)
    assert isinstance(state, BackingOff) and state.until == due[0] + 1, "after a reset a crash restarts at once"


def test_a_crash_after_a_stable_run_counts_from_zero_even_without_the_timer() -> None:
    state, t = crash_and_come_back(at("running"), 3.0)
    state, _ = machine.step(state, ProcessExited(state.book.gen, PID, CRASH), t + 61.0)
    assert isinstance(state, BackingOff) and state.book.attempts == 1 and state.until == t + 61.0


def test_ready_only_after_the_first_hello_ok() -> None:
    state, steps = replay(boot(), UP[:2])
    assert not [a for step in steps for a in actions(step) if a == READY]
    state, steps = replay(state, [UP[2], (4.0, LinkLost(1, 1, None, "")), (5.0, HandshakeDone(1, 2, "v", 4))])
    assert [a for step in steps for a in actions(step) if a == READY] == [READY]
    state, _ = crash_and_come_back(state, 6.0)
    assert isinstance(state, Running)


def test_status_once_per_transition_and_none_without_one() -> None:
    script = [*UP, (40.0, HealthChecked(1, 1, True, None)), (41.0, TimerFired(TimerKind.HEALTH))]
    _, steps = replay(boot(), script)
    counts = [actions(step).count(ST) for step in steps]
    assert counts == [0, 1, 0, 0, 0], "probing -> spawning keeps the cause; READY carries the running status"


def test_restart_of_an_adopted_gateway_over_the_control_socket_is_refused() -> None:
    handle = object()
    state, steps = replay(at("running_adopted"), [(5.0, RestartRequested("asked", handle))])
    assert isinstance(state, Running)
    assert [e for e in steps[0] if isinstance(e, Reply)] == [Reply(handle, None, NOT_OWNED)]


def test_restart_of_our_gateway_over_the_control_socket_is_accepted() -> None:
    handle = object()
    state, steps = replay(at("running"), [(5.0, RestartRequested("asked", handle))])
    assert isinstance(state, Restarting)
    assert [e for e in steps[0] if isinstance(e, Reply)] == [
        Reply(handle, {"restarting": True, "mode": "fresh", "restarts": 1})]


def test_a_restart_asked_while_stopping_is_answered_not_done() -> None:
    handle = object()
    state, steps = replay(at("stopping"), [(5.0, RestartRequested("asked", handle))])
    replies = [e for e in steps[0] if isinstance(e, Reply)]
    assert isinstance(state, Stopping) and replies[0].error is not None and replies[0].error[0] == "UNAVAILABLE"


def test_a_reload_that_changes_the_port_restarts_an_adopted_gateway_and_drops_its_link_first() -> None:
    state, steps = replay(at("running_adopted"), [(5.0, ConfigLoaded(changed_port(), TOKEN, {}))])
    assert isinstance(state, Probing) and state.book.gen == 2
    names = actions(steps[0])
    assert names.index("CloseLink:1") < names.index("Probe:2")


def test_the_watchdog_fires_every_interval_from_the_start() -> None:
    state = boot(watchdog=1.0)
    sent, now = 0, 0.0
    while now < 10.0:
        due = next_deadline(state)
        assert due is not None and due[0] - now <= 1.0
        while due is not None and due[0] <= now:
            state, effects = machine.step(state, TimerFired(due[1]), now)
            sent += actions(effects).count("Notify:watchdog")
            due = next_deadline(state)
        now += 0.25
    assert sent == 10


def test_sigterm_sends_stopping_and_ends_without_a_gateway() -> None:
    state, steps = replay(at("running_adopted"), [(5.0, SignalReceived(signal.SIGTERM))])
    assert isinstance(state, Stopped) and STOP in actions(steps[0])


# ---------------------------------------------------------------- events for `clawsvc events`


def emitted(steps: list[list[Any]]) -> list[tuple[str, str, Any]]:
    """(source, name, payload) of every Emit, in order."""
    return [(e.source, e.name, e.payload) for step in steps for e in step if isinstance(e, Emit)]


def test_events_of_a_start_up_to_ready() -> None:
    state, first = machine.start(CONFIG, TOKEN, {}, 0.0, None, seed=7)
    state, steps = replay(state, UP)
    assert emitted([first, *steps]) == [
        ("service", "state", {"from": "stopped", "to": "starting", "cause": "checking port 18789"}),
        ("service", "gateway.spawned", {"pid": PID}),
        ("service", "ready", {"version": "v1", "pid": PID}),
        ("service", "state", {"from": "starting", "to": "running", "cause": None}),
    ]


def test_ready_is_emitted_only_for_the_first_hello_ok() -> None:
    _, steps = replay(at("running"), [(4.0, LinkLost(1, 1, None, "")), (5.0, HandshakeDone(1, 2, "v", 4))])
    assert [name for _, name, _ in emitted(steps)] == ["state", "state"]


def test_events_of_a_crash_and_the_restart() -> None:
    state, steps = replay(at("running"), [(5.0, ProcessExited(1, PID, CRASH))])
    assert isinstance(state, BackingOff)
    cause = f"gateway pid {PID} exited with status 1"
    assert emitted(steps) == [
        ("service", "gateway.exited", {"pid": PID, "status": "exited with status 1", "returncode": 1,
                                       "signal": None}),
        ("service", "restart", {"reason": cause, "attempt": 1, "delay": 0.0}),
        ("service", "state", {"from": "running", "to": "reconnecting", "cause": cause}),
    ]


def test_events_of_a_restart_over_the_control_socket() -> None:
    state, steps = replay(at("running"), [(5.0, RestartRequested("asked", object())),
                                          (6.0, ProcessExited(1, PID, ExitInfo(None, 15))),
                                          (6.0, PortFree(2)), (6.0, Spawned(2, PID + 1)),
                                          (7.0, HandshakeDone(2, 2, "v1", 4))])
    assert isinstance(state, Running)
    assert emitted(steps) == [
        ("service", "restart.requested", {"reason": "asked"}),
        ("service", "state", {"from": "running", "to": "starting",
                              "cause": "restarting gateway (asked); the gateway finishes its active work first"}),
        ("service", "gateway.exited", {"pid": PID, "status": "killed by SIGTERM", "returncode": None,
                                       "signal": 15}),
        ("service", "gateway.spawned", {"pid": PID + 1}),
        ("service", "state", {"from": "starting", "to": "running", "cause": None}),
    ]


def test_a_refused_restart_emits_nothing() -> None:
    _, steps = replay(at("running_adopted"), [(5.0, RestartRequested("asked", object()))])
    assert emitted(steps) == []


def test_events_of_failed_health_checks() -> None:
    _, steps = replay(at("running"), [(40.0, HealthChecked(1, 1, False, "timeout")),
                                      (80.0, HealthChecked(1, 1, False, "closed"))])
    events = emitted(steps)
    assert events[:2] == [("service", "health.failed", {"failures": 1, "limit": 2, "error": "timeout"}),
                          ("service", "health.failed", {"failures": 2, "limit": 2, "error": "closed"})]
    assert events[2] == ("service", "gateway.replaced",
                         {"pid": PID, "reason": "2 consecutive failed health checks; last: closed"})
    assert events[3][1] == "state" and events[3][2]["to"] == "reconnecting"


def test_events_of_reloads() -> None:
    _, steps = replay(at("running"), [(5.0, ConfigFailed("bad: line 3")), (6.0, ConfigLoaded(CONFIG, TOKEN, {})),
                                      (7.0, ConfigLoaded(changed_port(), TOKEN, {}))])
    assert emitted(steps)[:3] == [("service", "reload", {"ok": False, "changed": [], "error": "bad: line 3"}),
                                  ("service", "reload", {"ok": True, "changed": [], "error": None}),
                                  ("service", "reload", {"ok": True, "changed": ["gateway.port"], "error": None})]
    assert emitted(steps)[3][1] == "restart.requested"


def test_giving_up_emits_error_then_the_state() -> None:
    state, t = at("running"), 3.0
    for _ in range(3):
        state, _ = machine.step(state, ProcessExited(state.book.gen, PID, CRASH), t)
        t = state.until
        state, _ = replay(state, [(t, TimerFired(TimerKind.BACKOFF)), (t, PortFree(state.book.gen + 1)),
                                  (t, Spawned(state.book.gen + 1, PID))])
    state, steps = replay(state, [(t + 1, ProcessExited(state.book.gen, PID, CRASH))])
    assert isinstance(state, Stopped)
    events = emitted(steps)
    assert [name for _, name, _ in events] == ["gateway.exited", "error", "state"]
    assert events[1][2] == {"error": f"gateway pid {PID} exited with status 1; gave up after 3 attempts in a row",
                            "exit_code": exitcodes.FAIL}
    assert events[2][2] == {"from": "starting", "to": "error", "cause": events[1][2]["error"]}


def test_gateway_events_are_passed_on_with_their_seq_ticks_included() -> None:
    chat = {"text": "hello"}
    _, steps = replay(at("running"), [(5.0, GatewayEventSeen(1, 1, "chat", chat, 7)),
                                      (5.1, GatewayEventSeen(1, 1, "tick", {"ts": 1}, 8)),
                                      (5.2, GatewayEventSeen(1, 99, "chat", chat, 1))])  # a link already dropped
    assert [e for step in steps for e in step if isinstance(e, Emit)] == [
        Emit("chat", chat, "gateway", 7), Emit("tick", {"ts": 1}, "gateway", 8)]


def test_gateway_payloads_never_reach_a_log_line() -> None:
    secret = {"text": "my card number is 4111"}
    _, steps = replay(at("running"), [(5.0, GatewayEventSeen(1, 1, "chat", secret, 1)),
                                      (6.0, GatewayEventSeen(1, 1, "shutdown", {"reason": "x", **secret}, 2))])
    logged = " ".join(e.text for step in steps for e in step if isinstance(e, Log))
    assert "4111" not in logged and "chat" in logged


# ---------------------------------------------------------------- the restart policy


def delays(attempts: int, config: ReconnectConfig, seed: int = 5) -> list[float | None]:
    out = []
    for attempt in range(1, attempts + 1):
        delay, seed = restart_delay(attempt, config, seed)
        out.append(delay)
    return out


def test_first_failure_restarts_at_once_then_backs_off_within_the_cap() -> None:
    drawn = delays(41, ReconnectConfig(base_delay=1.0, max_delay=8.0, max_attempts=0))
    assert drawn[0] == 0.0
    for attempt, delay in enumerate(drawn[1:], start=2):
        assert delay is not None and 0.0 <= delay <= min(8.0, 2.0 ** (attempt - 2)), (attempt, delay)
    at_cap = drawn[11:]
    assert len(set(at_cap)) > 1, "jitter must be kept once the delay reaches the cap"
    assert max(d for d in at_cap if d is not None) > 4.0, "at the cap the delay is drawn from [0, max_delay]"


def test_gives_up_after_max_attempts_and_zero_means_never() -> None:
    assert [d is not None for d in delays(4, ReconnectConfig(max_attempts=3))] == [True, True, True, False]
    assert all(d is not None for d in delays(100, ReconnectConfig(max_attempts=0)))


def test_the_jitter_replays_from_the_seed() -> None:
    config = ReconnectConfig(max_attempts=0)
    assert delays(10, config, seed=1) == delays(10, config, seed=1)
    assert delays(10, config, seed=1) != delays(10, config, seed=2)


def test_a_reload_applies_new_restart_limits() -> None:
    state, t = crash_and_come_back(at("running"), 3.0)
    state, t = crash_and_come_back(state, t)
    strict = replace(CONFIG, reconnect=replace(CONFIG.reconnect, max_attempts=2))
    state, _ = machine.step(state, ConfigLoaded(strict, TOKEN, {}), t)
    state, _ = machine.step(state, ProcessExited(state.book.gen, PID, CRASH), t + 1)
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.FAIL


PURE = ("machine", "states", "effects", "backoff", "moves", "starting", "running", "lifecycle", "messages", "status",
        "catalogue")
IMPURE = {"threading", "subprocess", "socket", "os", "time", "logging", "selectors", "asyncio", "queue"}


@pytest.mark.parametrize("module", PURE)
def test_the_machine_modules_import_nothing_that_does_io(module: str) -> None:
    source = importlib.import_module(f"clawsvc.service.{module}").__file__
    assert source is not None
    tree = ast.parse(Path(source).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & IMPURE, imported & IMPURE
    froms = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    clawsvc_modules = {m for m in froms if m.split(".")[0] == "clawsvc"}
    assert clawsvc_modules <= {"clawsvc", "clawsvc.config", "clawsvc.exits", "clawsvc.text", "clawsvc.service",
                               *(f"clawsvc.service.{name}" for name in PURE)}, clawsvc_modules


# ------------------------------------------------------------------ work in flight: drains, the gateway's own restart

def effects_of(steps: list[list[Any]], kind: type) -> list[Any]:
    return [e for step in steps for e in step if isinstance(e, kind)]


def test_a_stop_keeps_the_link_open_until_the_gateway_closes_it() -> None:
    """SIGTERM lets the gateway finish a turn: its final reply still reaches `clawsvc events`."""
    final = GatewayEventSeen(1, 1, "chat", {"runId": "r1", "state": "final"}, 12)
    state, steps = replay(at("running"), [(5.0, SignalReceived(signal.SIGTERM)), (20.0, final),
                                          (21.0, GatewayEventSeen(1, 1, "shutdown", {"reason": "stop"}, 13)),
                                          (21.5, LinkLost(1, 1, 1012, "service restart")),
                                          (22.0, ProcessExited(1, PID, ExitInfo(0, None)))])
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.OK
    assert effects_of(steps[:1], StopProcess) == [StopProcess(PID, None)]  # the full drain budget
    assert effects_of(steps[:1], CloseLink) == []
    assert [(e.name, e.payload, e.seq) for e in effects_of(steps[1:3], Emit)] == [
        ("chat", {"runId": "r1", "state": "final"}, 12), ("shutdown", {"reason": "stop"}, 13)]
    assert effects_of(steps[3:], CloseLink) == [], "the gateway closed it already"


def test_the_status_says_the_gateway_is_draining() -> None:
    state, _ = replay(at("running"), [(5.0, SignalReceived(signal.SIGTERM))])
    assert machine.view(state).cause == "the gateway finishes its active work first"
    state, _ = replay(at("running"), [(5.0, RestartRequested("r"))])
    assert machine.view(state).cause == "restarting gateway (r); the gateway finishes its active work first"


def test_a_safe_restart_is_the_gateways_own_same_process_restart() -> None:
    handle = object()
    state, steps = replay(at("running"), [(5.0, RestartRequested("asked", handle, RestartMode.SAFE))])
    assert isinstance(state, Running) and state.restart == "asked"
    assert effects_of(steps, Reply) == [Reply(handle, {"restarting": True, "mode": "safe", "restarts": 1})]
    assert effects_of(steps, AskRestart) == [AskRestart(1, 1, "asked")]
    assert effects_of(steps, StopProcess) == [] and effects_of(steps, CloseLink) == []
    shutdown = GatewayEventSeen(1, 1, "shutdown", {"reason": "restart", "restartExpectedMs": 1500}, 40)
    state, steps = replay(state, [(6.0, RestartAnswered(1, 1, True)), (30.0, shutdown),
                                  (36.0, HandshakeDone(1, 2, "v1", 4))])
    assert isinstance(state, Running) and state.pid == PID and state.link == 2 and state.restart is None
    assert state.book.restarts == 1 and state.book.attempts == 0
    assert effects_of(steps, StopProcess) == [], "nothing was killed"


def test_a_second_safe_restart_request_is_served_by_the_pending_one() -> None:
    state, steps = replay(at("restart_asked"), [(6.0, RestartRequested("again", object(), RestartMode.SAFE))])
    assert isinstance(state, Running) and state.restart == "test"
    assert effects_of(steps, AskRestart) == [] and effects_of(steps, StopProcess) == []


def test_a_reload_or_switch_with_a_safe_restart_pending_still_gets_a_new_process() -> None:
    """The gateway's own restart keeps its process: a new gateway.env, argv or release (a reload, upgrade's switch)
    would not apply. So the gateway drains (its link kept: a final reply still reaches `clawsvc events`) and a new
    one starts."""
    state, steps = replay(at("restart_asked"), [(7.0, ConfigLoaded(changed_port(), TOKEN, {}))])
    assert isinstance(state, Restarting) and state.link == 1 and state.reason == "config reload changed gateway.port"
    assert effects_of(steps, StopProcess) == [StopProcess(PID, None)] and effects_of(steps, CloseLink) == []
    state, _ = replay(state, [(30.0, ProcessExited(1, PID, ExitInfo(0, None)))])
    assert isinstance(state, Probing) and state.book.config.gateway.port == changed_port().gateway.port


def test_force_stops_at_once_even_with_a_safe_restart_pending() -> None:
    state, steps = replay(at("restart_asked"), [(6.0, RestartRequested("now", object(), RestartMode.FORCE))])
    assert isinstance(state, Restarting) and state.link is None
    assert effects_of(steps, StopProcess) == [StopProcess(PID, FORCE_GRACE)]
    assert effects_of(steps, CloseLink) == [CloseLink(1)]


@pytest.mark.parametrize("name", ["reconnecting", "awaiting"])
def test_a_safe_restart_of_a_gateway_that_is_not_running_drains_and_respawns(name: str) -> None:
    handle = object()
    state, steps = replay(at(name), [(5.0, RestartRequested("asked", handle, RestartMode.SAFE))])
    assert isinstance(state, Restarting)
    assert effects_of(steps, Reply) == [Reply(handle, {"restarting": True, "mode": "fresh", "restarts": 1})]
    assert effects_of(steps, StopProcess) == [StopProcess(PID, None)] and effects_of(steps, AskRestart) == []


def test_a_reload_that_needs_a_new_gateway_drains_the_old_one() -> None:
    final = GatewayEventSeen(1, 1, "chat", {"state": "final"}, 5)
    state, steps = replay(at("running"), [(5.0, ConfigLoaded(changed_port(), TOKEN, {})), (9.0, final)])
    assert isinstance(state, Restarting) and state.link == 1
    assert effects_of(steps, StopProcess) == [StopProcess(PID, None)]
    assert [e.name for e in effects_of(steps[1:], Emit)] == ["chat"]


def test_a_restart_the_gateway_refuses_or_never_begins_drains_it_instead() -> None:
    for answer in (RestartAnswered(1, 1, False, "INVALID_REQUEST: unknown method"), TimerFired(TimerKind.RESTART)):
        state, steps = machine.step(at("restart_asked"), answer, 400.0)
        assert isinstance(state, Restarting) and state.link == 1 and state.reason == "test"
        assert effects_of([steps], StopProcess) == [StopProcess(PID, None)]
    asked = at("restart_asked")
    assert isinstance(asked, Running) and asked.restart_by == 4.0 + SAFE_RESTART_BOUND
    state, _ = replay(asked, [(t, TimerFired(TimerKind.HEALTH)) for t in range(40, 400, 30)])
    assert isinstance(state, Running), "a restart still pending is not forced before its bound"


def test_an_answer_for_another_link_is_ignored() -> None:
    state, _ = machine.step(at("restart_asked"), RestartAnswered(1, 7, False, "closed"), 6.0)
    assert isinstance(state, Running) and state.restart == "test"


def test_status_shows_what_the_drain_still_waits_for() -> None:
    state, _ = replay(at("running"), [(5.0, SignalReceived(signal.SIGTERM)),
                                      (6.0, DrainNoticed(1, "waiting for pendingReplies=1 embeddedRuns=1"))])
    assert machine.view(state).cause == ("the gateway finishes its active work first (waiting for pendingReplies=1 "
                                         "embeddedRuns=1)")
    state, _ = replay(at("restart_asked"), [(5.0, RestartAnswered(1, 1, True, None, "restart deferred: 1 pending "
                                                                                     "reply delivery operation(s)"))])
    assert machine.view(state).cause == ("restart requested (test); the gateway restarts once its active work is "
                                         "done (restart deferred: 1 pending reply delivery operation(s))")


def exit_with(kind: ExitKind, code: int = 78) -> ProcessExited:
    return ProcessExited(1, PID, ExitInfo(code, None, cause=ExitCause(kind, f"the {kind.value} problem; the fix")))


@pytest.mark.parametrize("kind", [ExitKind.CONFIG, ExitKind.SCHEMA])
def test_an_exit_only_a_person_can_fix_ends_clawsvc_with_78_naming_it(kind: ExitKind) -> None:
    state, _ = machine.step(at("running"), exit_with(kind), 9.0)
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.CONFIG
    assert state.book.error == f"gateway pid {PID} exited with status 78: the {kind.value} problem; the fix"


@pytest.mark.parametrize("kind", [ExitKind.LOCKED, ExitKind.PORT])
def test_an_exit_78_that_may_clear_is_retried(kind: ExitKind) -> None:
    state, _ = machine.step(at("running"), exit_with(kind), 9.0)
    assert isinstance(state, BackingOff) and state.book.attempts == 1
    assert state.cause.endswith(f"the {kind.value} problem; the fix")


def test_an_unexplained_78_is_still_final() -> None:
    state, _ = machine.step(at("running"), ProcessExited(1, PID, ExitInfo(78, None)), 9.0)
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.CONFIG


def test_readiness_is_shown_and_told_only_when_it_changes() -> None:
    failing = ReadinessChecked(1, 1, False, ("agent-database:main", "channel:telegram"))
    state, steps = replay(at("running"), [(40.0, ReadinessChecked(1, 1, True, ())), (70.0, failing), (100.0, failing),
                                          (130.0, ReadinessChecked(1, 1, True, ())),
                                          (131.0, ReadinessChecked(1, 9, False, ("other link",)))])
    assert emitted(steps) == [("service", "readiness", {"ready": True, "failing": []}),
                              ("service", "readiness", {"ready": False,
                                                        "failing": ["agent-database:main", "channel:telegram"]}),
                              ("service", "readiness", {"ready": True, "failing": []})]
    assert isinstance(state, Running) and (state.book.ready, state.book.failing) == (True, ())
    state, _ = machine.step(state, failing, 140.0)
    view = machine.view(state)
    assert (view.ready, view.failing) == (False, ("agent-database:main", "channel:telegram"))
    assert "not-ready=agent-database:main,channel:telegram" in status_line(view, 140.0)
    state, _ = machine.step(state, ProcessExited(1, PID, CRASH), 150.0)
    assert machine.view(state).ready is None, "a gateway that is gone is not 'not ready'"


def test_an_exit_0_with_a_handoff_is_the_gateways_own_restart_not_a_crash() -> None:
    state, steps = replay(at("running", FRESH), [(30.0, ProcessExited(1, PID, ExitInfo(0, None)))])
    assert isinstance(state, HandingOff) and state.pid == PID
    consume = [e for e in steps[0] if type(e).__name__ == "ConsumeHandoff"]
    assert [(e.gen, e.pid) for e in consume] == [(1, PID)]
    state, _ = replay(state, [(40.0, HandoffChecked(1, PID, True, "accepted")), (40.0, PortFree(2)),
                              (40.0, Spawned(2, PID + 1)), (50.0, HandshakeDone(2, 2, "v2", 4))])
    assert isinstance(state, Running) and state.book.restarts == 1 and state.book.attempts == 0


def test_an_exit_0_without_a_handoff_is_a_crash() -> None:
    state, _ = machine.step(at("handing_off"), HandoffChecked(1, PID, False, "none (missing)"), 40.0)
    assert isinstance(state, BackingOff) and state.book.attempts == 1
    assert state.cause == f"gateway pid {PID} exited 0 without a restart handoff for clawsvc (none (missing))"


def test_with_in_process_restarts_an_exit_0_is_not_checked_for_a_handoff() -> None:
    state, _ = machine.step(at("running"), ProcessExited(1, PID, ExitInfo(0, None)), 30.0)
    assert isinstance(state, BackingOff)


def test_a_restart_reply_gives_the_count_a_client_watches_for_a_crash_after_it() -> None:
    """The upgrade's switch watches `restarts`: counted from the reply, a crash loop before the request is not
    taken for a crash of the new version."""
    crashing, _ = replay(at("running"), [(5.0, ProcessExited(1, PID, CRASH))])
    handle = object()
    state, steps = machine.step(crashing, RestartRequested("switch", handle), 6.0)
    (reply,) = effects_of([steps], Reply)
    assert reply.result is not None and reply.result["restarts"] == state.book.restarts == 2


# ------------------------------------------------------------------ what the metrics count; the memory watch

MIB = 1 << 20
WATCHED = replace(CONFIG, gateway=replace(CONFIG.gateway, memory=MemoryConfig(warn_above=600 * MIB,
                                                                              restart_above=800 * MIB,
                                                                              cooldown=3600.0)))


def by_reason(state: MState) -> dict[str, int]:
    return dict(machine.view(state).restarts_by)


def come_up(state: MState, t: float, pid: int = PID) -> MState:
    """From Probing: the port is free, `pid` spawns and answers."""
    gen = state.book.gen
    state, _ = replay(state, [(t, PortFree(gen)), (t, Spawned(gen, pid)), (t + 1, HandshakeDone(gen, 9, "v", 4))])
    assert isinstance(state, Running)
    return state


def test_restarts_are_counted_by_their_reason() -> None:
    zero = {"crash": 0, "hang": 0, "requested": 0, "reload": 0, "upgrade": 0, "memory": 0}
    assert by_reason(at("running")) == zero
    state, t = crash_and_come_back(at("running"), 3.0)
    assert by_reason(state) == {**zero, "crash": 1}
    state, _ = replay(state, [(t + 40, HealthChecked(state.book.gen, 9, False, "timeout")),
                              (t + 80, HealthChecked(state.book.gen, 9, False, "timeout")),
                              (t + 81, ProcessExited(state.book.gen, PID, ExitInfo(None, 15)))])
    assert isinstance(state, BackingOff) and by_reason(state) == {**zero, "crash": 1, "hang": 1}
    state, _ = replay(state, [(state.until, TimerFired(TimerKind.BACKOFF))])
    state = come_up(state, t + 100)
    for message, reason in ((RestartRequested("asked", object()), "requested"),
                            (ConfigLoaded(changed_port(), TOKEN, {}), "reload"),
                            (RestartRequested("upgrade", None, RestartMode.FRESH, RestartCause.UPGRADE), "upgrade")):
        before = by_reason(state)
        state, _ = replay(state, [(t + 200, message)])
        assert isinstance(state, Restarting) and by_reason(state) == before, "counted once the restart happens"
        state, _ = replay(state, [(t + 210, ProcessExited(state.book.gen, PID, ExitInfo(0, None)))])
        assert by_reason(state) == {**before, reason: before[reason] + 1}
        state = come_up(state, t + 220)
    assert machine.view(state).restarts == sum(by_reason(state).values()) == 5


def test_a_safe_restart_counts_when_the_gateway_begins_it_and_marks_the_last_start() -> None:
    state, _ = replay(at("restart_asked"), [(6.0, RestartAnswered(1, 1, True))])
    assert by_reason(state)["requested"] == 0 and machine.view(state).last_start == 2.0  # spawned at 2.0
    shutdown = GatewayEventSeen(1, 1, "shutdown", {"reason": "restart", "restartExpectedMs": 1500}, 4)
    state, _ = replay(state, [(30.0, shutdown)])
    assert by_reason(state)["requested"] == 1 and machine.view(state).last_start == 30.0


def test_failed_health_checks_are_counted_across_gateways() -> None:
    state, _ = replay(at("running"), [(40.0, HealthChecked(1, 1, False, "timeout")),
                                      (70.0, HealthChecked(1, 1, True, None)),
                                      (100.0, HealthChecked(1, 1, False, "timeout"))])
    assert machine.view(state).health_failures == 2
    state, _ = crash_and_come_back(state, 110.0)
    assert machine.view(state).health_failures == 2


def test_readiness_failing_for_longer_than_not_ready_after_is_told_once() -> None:
    config = replace(CONFIG, health=replace(CONFIG.health, not_ready_after=90.0))
    down = ReadinessChecked(1, 1, False, ("channel:telegram",))
    _, steps = replay(at("running", config), [(40.0, down), (70.0, down), (100.0, down), (130.0, down),
                                              (160.0, down), (190.0, ReadinessChecked(1, 1, True, ())),
                                              (220.0, down), (280.0, down), (310.0, down)])
    told = [(i, payload) for i, step in enumerate(steps) for _, name, payload in emitted([step])
            if name == "readiness.failing"]
    assert told == [(3, {"failing": ["channel:telegram"], "seconds": 90.0}),
                    (8, {"failing": ["channel:telegram"], "seconds": 90.0})]


def test_memory_above_warn_above_is_told_once_and_shown_on_status() -> None:
    state, steps = replay(at("running", WATCHED), [(40.0, MemorySampled(1, 1, PID, 500 * MIB, "rss")),
                                                   (70.0, MemorySampled(1, 1, PID, 650 * MIB, "rss")),
                                                   (100.0, MemorySampled(1, 1, PID, 700 * MIB, "rss")),
                                                   (130.0, MemorySampled(1, 1, PID, 550 * MIB, "rss"))])
    assert [actions(step) for step in steps] == [[], [ST, "Emit:memory.high"], [], [ST]]
    assert emitted(steps[1:2]) == [("service", "memory.high", {"bytes": 650 * MIB, "limit": 600 * MIB,
                                                                "action": "warn"})]
    state, _ = replay(state, [(160.0, MemorySampled(1, 1, PID, 700 * MIB, "rss"))])
    view = machine.view(state)
    assert view.memory == 700 * MIB and view.memory_high
    assert "memory-high=700MiB" in status_line(view, 160.0)


def test_a_sample_of_another_link_or_pid_is_ignored() -> None:
    for message in (MemorySampled(1, 7, PID, 900 * MIB, "rss"), MemorySampled(1, 1, PID + 1, 900 * MIB, "rss")):
        state, effects = machine.step(at("running", WATCHED), message, 40.0)
        assert machine.view(state).memory is None and actions(effects) == []


def test_memory_above_restart_above_drains_once_per_cooldown_never_in_a_loop() -> None:
    """A threshold below what a fresh gateway uses: one draining restart, then none until the cooldown is over."""
    big = 900 * MIB
    state, steps = replay(at("running", WATCHED), [(40.0, MemorySampled(1, 1, PID, big, "rss"))])
    assert isinstance(state, Restarting) and state.cause is RestartCause.MEMORY and state.link == 1
    assert effects_of(steps, StopProcess) == [StopProcess(PID, None)], "SIGTERM: the gateway drains its work"
    assert [name for _, name, _ in emitted(steps)][:3] == ["memory.high", "memory.high", "restart.requested"]
    assert [p["action"] for _, n, p in emitted(steps) if n == "memory.high"] == ["warn", "restart"]
    state, _ = replay(state, [(50.0, ProcessExited(1, PID, ExitInfo(0, None)))])
    state = come_up(state, 51.0, PID + 1)
    assert by_reason(state)["memory"] == 1 and state.book.attempts == 0
    t, stops = 60.0, 0
    while t < 40.0 + 3600.0:  # the new gateway is as big: sampled every 30 s for the rest of the hour
        state, steps = replay(state, [(t, MemorySampled(state.book.gen, 9, PID + 1, big, "rss"))])
        stops += len(effects_of(steps, StopProcess))
        t += 30.0
    assert stops == 0 and isinstance(state, Running) and by_reason(state)["memory"] == 1
    state, steps = replay(state, [(t, MemorySampled(state.book.gen, 9, PID + 1, big, "rss"))])
    assert isinstance(state, Restarting) and effects_of(steps, StopProcess) == [StopProcess(PID + 1, None)]


def test_no_memory_restart_while_another_restart_is_pending_nor_for_an_adopted_gateway() -> None:
    asked = at("restart_asked", WATCHED)
    state, steps = machine.step(asked, MemorySampled(1, 1, PID, 900 * MIB, "rss"), 40.0)
    assert isinstance(state, Running) and effects_of([steps], StopProcess) == []
    assert state.book.memory_restart_at is None, "the cooldown starts with a restart it caused"
    _, effects = machine.step(at("running_adopted", WATCHED), TimerFired(TimerKind.HEALTH), 40.0)
    assert [e.pid for e in effects if type(e).__name__ == "CheckHealth"] == [None], "nothing to sample"


def test_a_new_gateway_starts_with_no_memory_seen() -> None:
    state, _ = replay(at("running", WATCHED), [(40.0, MemorySampled(1, 1, PID, 650 * MIB, "rss"))])
    state, _ = crash_and_come_back(state, 50.0)
    view = machine.view(state)
    assert (view.memory, view.memory_high) == (None, False)


# ---------------------------------------------------------------- a gateway whose own config took another token

def test_a_gateway_that_rejects_our_token_is_never_a_dead_service() -> None:
    """openclaw.json got a token of its own (the Control UI's hint): the gateway closes our link with 4001 and
    rejects our token. clawsvc keeps the gateway, says what to undo, asks again every max_delay, and is running
    again once the fix is in, without a restart and without a second READY=1."""
    state = at("locked_out")
    assert isinstance(state, LockedOut) and state.pid == PID and phase(state) is State.RECONNECTING
    line = status_line(machine.view(state), T)
    assert line.startswith(f"reconnecting pid={PID} port=18789: gateway pid {PID} rejects clawsvc's token")
    assert "openclaw.json sets gateway.auth.token" in line and "`sudo clawsvc doctor --fix`" in line
    assert next_deadline(state) == (5.0 + CONFIG.reconnect.max_delay, TimerKind.AUTH)
    state, steps = replay(state, [(13.0, TimerFired(TimerKind.AUTH)),
                                  (14.0, HandshakeFailed(1, HandshakeKind.AUTH, "token mismatch")),
                                  (22.0, TimerFired(TimerKind.AUTH)),
                                  (23.0, HandshakeDone(1, 2, "v1", 4))])
    assert [actions(effects) for effects in steps] == [["Connect"], [], ["Connect"], [ST, STATE]]
    again = [effect for effect in steps[1] if isinstance(effect, Log)]
    assert [log.level for log in again] == [10], "the same refusal again is not a new error line every 8 s"
    assert isinstance(state, Running) and state.pid == PID and state.book.error is None
    assert status_line(machine.view(state), 23.0).startswith(f"running pid={PID} port=18789 gateway=v1")


def test_a_start_whose_gateway_rejects_our_token_is_ready_and_keeps_its_gateway() -> None:
    """`systemctl start` must not wait for a person: READY=1 once, the start's EXTEND_TIMEOUT ends, nothing is
    stopped, and the refusal is an event an alert can follow."""
    state, steps = replay(at("awaiting"), [(5.0, HandshakeFailed(1, HandshakeKind.AUTH, "token mismatch"))])
    assert isinstance(state, LockedOut) and state.book.ready_sent and state.book.extend_at is None
    assert actions(steps[0]) == [READY, AUTH, STATE]
    assert not any(isinstance(effect, StopProcess) for effect in steps[0])
    emitted = next(effect for effect in steps[0] if isinstance(effect, Emit) and effect.name == "auth.rejected")
    assert emitted.payload["pid"] == PID and "doctor --fix" in emitted.payload["reason"]
    state, steps = replay(state, [(13.0, TimerFired(TimerKind.AUTH)), (14.0, HandshakeDone(1, 2, "v1", 4))])
    assert isinstance(state, Running) and READY not in actions(steps[1])


def test_an_adopted_gateway_that_rejects_our_token_still_ends_clawsvc_with_78() -> None:
    """Not ours: its config is not the state dir clawsvc gives its own gateway, and retrying cannot help."""
    state, _ = replay(at("reconnecting_adopted"), [(5.0, HandshakeFailed(1, HandshakeKind.AUTH, "token mismatch"))])
    assert isinstance(state, Stopped) and state.book.exit_code == exitcodes.CONFIG
    assert "rejected our token" in (state.book.error or "")
