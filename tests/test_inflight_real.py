"""Work in flight survives an upgrade, `clawsvc restart-gateway`, a reload and a stop (issue 19), against the
real gateway, with the slow model of tests/helpers/slow_model.py and clawsvc's DEFAULT lifecycle settings
(gateway.stop_timeout 330 s). Each action comes 1 s into a 25 s model call, and the turn ends as its user wants:
exactly one model call, finished (not cut off and run again); its final reply reaches a `clawsvc events --follow
--json` consumer under the turn's own runId; no SIGKILL (the gateway exits 0, or keeps its pid for the safe
restart); then the service is running again and a new turn works (not after the stop).

One clawsvc for the module, its gateway.command on a gateway-install prefix that starts on openclaw 2026.9.5; the
tests run in file order: the upgrade to 2026.9.6 first, then restart-gateway, the reload, and the stop last (it
ends the service); one run alone (-k) meets the same turn on 2026.9.5. Timings and what clawsvc logged are
printed (-s). Wall time here: 3.5-6 min for the module (load 6-10 on 2 cores).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from helpers.slow_model import ModelCall, SlowModel, user_texts
from realgw import free_port
from service_proc import STRIPPED, ServiceProcess, merge
from slowmodel_kit import START_TIMEOUT, EventsFollower, reply_text, send_turn_through, slow_service_config
from upgrade_farm import NEW, OLD, build_farm
from waiting import poll

from clawsvc.commands.runtime import links as gateway_links
from clawsvc.commands.runtime.provision import Installation

pytestmark = [pytest.mark.realgateway, pytest.mark.timeout(1500)]

REPLY = "the slow model's whole reply, word by word"
CALL = 25.0        # seconds the model takes to answer a turn's call
INTO_CALL = 1.0    # the action comes this long after the model call arrived
TURN_TIMEOUT = 180.0  # chat.send → model call: 8-12 s on a loaded machine, a fresh gateway's first turn more
DEFAULT_STOP = 330.0  # gateway.stop_timeout's default: the gateway's own stop policy
DRAIN_TIMEOUT = DEFAULT_STOP + 60.0  # a drain, with the gateway's close and exit after it
UPGRADE_TIMEOUT = 900.0  # canary + drain + start + health checks, on a loaded 2-core machine
SIGTERM_SENT = r"stopping gateway pid {pid}: sent SIGTERM; it finishes its active work first \(SIGKILL of its " \
               r"process group in 330s"
INTERNAL_CONTEXT = re.compile(r"<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>.*?<<<END_OPENCLAW_INTERNAL_CONTEXT>>>", re.S)
DRAINING = "the gateway finishes its active work first (waiting for "


@dataclass
class Scene:
    svc: ServiceProcess
    model: SlowModel
    follower: EventsFollower


@dataclass
class Turn:
    run_id: str
    text: str
    call: ModelCall
    calls_before: int  # the model's calls before this turn's
    pid: int           # the gateway's, when the turn was sent
    since: int         # clawsvc's log offset then
    acted: float       # time.monotonic() of the action: when turn_in_flight returned


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, gateway_install: Installation) -> Iterator[Scene]:
    farm = build_farm(tmp_path_factory.mktemp("farm"))
    root = tmp_path_factory.mktemp("svc")
    with SlowModel(reply=REPLY, delay=CALL, chunks=5) as model:
        config = slow_service_config(root, gateway_install, free_port(), model.base_url)
        config["gateway"]["command"] = list(gateway_links.stable_command(farm))
        del config["gateway"]["stop_timeout"]  # the test-speed one of base_config: the default applies
        svc = ServiceProcess.start(root, config)
        follower = None
        try:
            started = time.monotonic()
            running(svc, OLD)
            print(f"\nTIMING clawsvc run -> running {OLD}: {time.monotonic() - started:.1f}s")
            follower = EventsFollower(svc)
            follower.wait_subscribed(svc)
            yield Scene(svc, model, follower)
        finally:
            if follower is not None:
                follower.close()
            svc.close()


def running(svc: ServiceProcess, version: str, pid: int | None = None, timeout: float = START_TIMEOUT
            ) -> dict[str, Any]:
    """The first status of `version` running (with gateway pid `pid`, when given)."""
    return svc.wait_state(lambda s: s["state"] == "running" and s["gatewayVersion"] == version
                          and pid in (None, s["pid"]), timeout, f"the service running {version} (pid {pid or 'any'})")


def said(call: ModelCall) -> str:
    """The user's last message in a model call, as the gateway sends it (a timestamp before it, the runtime after
    it), not the context it adds as user messages too ("<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> ... <<<END_...")."""
    texts = [INTERNAL_CONTEXT.sub("", text).strip() for text in user_texts(call.request)]
    return next((text for text in reversed(texts) if text), "")


def turn_in_flight(scene: Scene, session: str) -> Turn:
    """A turn of its own session whose model call is INTO_CALL seconds old: the moment the issue acts at."""
    svc = scene.svc
    since, pid = len(svc.log()), svc.status()["pid"]
    scene.model.delay = CALL
    before = len(scene.model.calls)
    text = f"tell me slowly ({session})"
    run_id = send_turn_through(svc, text, session)["runId"]
    call = scene.model.wait_calls(before + 1, TURN_TIMEOUT)[before]
    assert text in said(call), said(call)
    threading.Event().wait(max(0.0, call.arrived + INTO_CALL - time.monotonic()))  # the scenario's timing
    assert call.outcome is None
    return Turn(run_id, text, call, before, pid, since, time.monotonic())


def final_reply(scene: Scene, turn: Turn) -> list[dict[str, Any]]:
    """The turn's chat events as the follower saw them: they end in its final reply, from the one model call."""
    events = scene.follower.chat_run(turn.run_id, DRAIN_TIMEOUT)
    print(f"\nTIMING {turn.text!r}: final reply on `clawsvc events` {time.monotonic() - turn.acted:.1f}s after "
          "the action")
    assert events[-1]["state"] == "final", events[-1]
    assert reply_text(events[-1]) == REPLY
    call = scene.model.wait_ended(turn.call, 10)
    print(f"TIMING its model call: {call.outcome} after {(call.ended or 0.0) - call.arrived:.1f}s")
    assert call.outcome == "finished"
    return events


def back(turn: Turn, status: dict[str, Any]) -> dict[str, Any]:
    print(f"TIMING running again (gateway pid {status['pid']}) {time.monotonic() - turn.acted:.1f}s after the action")
    return status


def show(svc: ServiceProcess, since: int) -> None:
    """What clawsvc said about the gateway during a scenario (with -s)."""
    lines = [line for line in svc.log()[since:].splitlines()
             if " clawsvc.supervisor: " in line or " clawsvc.gateway.process: " in line]
    print("\n".join(line for line in lines if " DEBUG " not in line))


def one_call_each(scene: Scene, *turns: tuple[str, Turn | None]) -> None:
    """Since the first turn, the model saw exactly one finished call per turn, in order (none run again)."""
    first = next(turn for _, turn in turns if turn is not None)
    calls = scene.model.calls[first.calls_before:]
    assert len(calls) == len(turns), [said(c) for c in calls]
    assert all(text in said(c) and c.outcome == "finished" for c, (text, _) in zip(calls, turns, strict=True))


def new_turn_works(scene: Scene, session: str) -> str:
    """A short turn after the action: its final reply reaches the follower. Returns its text."""
    scene.model.delay = 1.0
    text = f"and now quickly ({session})"
    run_id = send_turn_through(scene.svc, text, session)["runId"]
    events = scene.follower.chat_run(run_id, TURN_TIMEOUT)
    assert events[-1]["state"] == "final" and reply_text(events[-1]) == REPLY, events[-1]
    return text


def drain_shown(svc: ServiceProcess, state: str) -> None:
    """`clawsvc status` says that the gateway finishes its work first, and what it waits for: the turn."""
    status = svc.wait_state(lambda s: DRAINING in (s["cause"] or ""), 60, "status to say what the drain waits for")
    assert status["state"] == state and "embeddedRuns=1" in status["cause"], status["cause"]


def no_kill(svc: ServiceProcess, since: int) -> None:
    """Nothing was killed since `since` (and with -s: what clawsvc said about the gateway meanwhile)."""
    show(svc, since)
    log = svc.log()[since:]
    assert "sending SIGKILL" not in log and "forced: it did not stop" not in log, log[-3000:]


def a_new_gateway_after(scene: Scene, turn: Turn, session: str, version: str) -> None:
    """The drained gateway exited 0, a new one of `version` runs and answers a new turn; one model call each; no
    kill."""
    svc = scene.svc
    svc.wait_log(rf"gateway pid {turn.pid} exited with status 0; starting it again as asked", 120, turn.since)
    assert back(turn, running(svc, version))["pid"] != turn.pid
    one_call_each(scene, (turn.text, turn), (new_turn_works(scene, session), None))
    no_kill(svc, turn.since)


def after_final(scene: Scene, run_id: str, event: str, timeout: float = 60.0) -> dict[str, Any]:
    """The payload of the first gateway `event` the follower sees after run_id's final reply."""
    def seen() -> list[dict[str, Any]]:
        lines = list(scene.follower.lines)
        final = next(i for i, e in enumerate(lines) if e["name"] == "chat" and e["payload"].get("runId") == run_id
                     and e["payload"].get("state") == "final")
        return [e["payload"] for e in lines[final:] if e["name"] == event and e["source"] == "gateway"][:1]
    return poll(seen, timeout, f"a gateway {event} event after the final reply of run {run_id}")[0]


def start_upgrade(svc: ServiceProcess, version: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    return subprocess.Popen([sys.executable, "-m", "clawsvc", "upgrade", version, "-c", str(svc.config_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def wait_switch(svc: ServiceProcess, upgrade: subprocess.Popen[str], old: int, since: int) -> None:
    """Until clawsvc stops gateway `old` for the upgrade's switch; AssertionError if the upgrade ends first."""
    sigterm = re.compile(SIGTERM_SENT.format(pid=old))
    poll(lambda: upgrade.poll() is not None or sigterm.search(svc.log()[since:]), UPGRADE_TIMEOUT,
         "the upgrade's switch to stop the old gateway")
    if not sigterm.search(svc.log()[since:]):
        out, err = upgrade.communicate()
        raise AssertionError(f"clawsvc upgrade exited {upgrade.returncode} before its switch:\n{out}{err}")


def interrupt(upgrade: subprocess.Popen[str]) -> None:
    """Ctrl-C: the upgrade stops its canary and says where the links are."""
    upgrade.send_signal(signal.SIGINT)
    try:
        upgrade.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        upgrade.kill()
        upgrade.communicate()


def test_an_upgrade_during_a_turn_switches_only_after_the_turn(scene: Scene) -> None:
    """The canary takes longer than the call, so the model holds its last chunk until the switch's SIGTERM has
    reached the gateway, and then for the rest of a call the other actions meet (24 s): the switch meets the turn
    as they do."""
    svc = scene.svc
    hold = scene.model.hold = threading.Event()
    release = threading.Timer(CALL - INTO_CALL, hold.set)
    release.daemon = True
    upgrade = None
    try:
        turn = turn_in_flight(scene, "upgrade")
        upgrade = start_upgrade(svc, NEW)
        wait_switch(svc, upgrade, turn.pid, turn.since)
        assert turn.call.outcome is None, "the switch came after the turn's model call ended"
        release.start()
    except BaseException:
        hold.set()
        if upgrade is not None:
            interrupt(upgrade)
        raise
    finally:
        scene.model.hold = None
    drain_shown(svc, "starting")
    final_reply(scene, turn)
    out, err = upgrade.communicate(timeout=UPGRADE_TIMEOUT)
    print(f"\n$ clawsvc upgrade {NEW} -> {upgrade.returncode}\n{out}{err}")
    assert upgrade.returncode == 0 and f"upgraded: openclaw {OLD} -> {NEW}" in out
    assert "Traceback" not in out + err and svc.token not in out + err
    a_new_gateway_after(scene, turn, "upgrade", NEW)


def test_restart_gateway_during_a_turn_restarts_it_once_the_turn_is_done(scene: Scene) -> None:
    svc = scene.svc
    before = svc.status()["restarts"]
    turn = turn_in_flight(scene, "restart")
    done = svc.cli("restart-gateway")
    assert done.returncode == 0, done.stderr
    assert "the gateway restarts itself (same process) as soon as its active work is done" in done.stdout
    accepted = svc.wait_log(r"gateway accepted the restart \(.*\); it restarts once its active work is done: "
                            r"(.*)\n", 60, turn.since)
    assert "restart deferred" in accepted.group(1) and "embedded run" in accepted.group(1)
    final_reply(scene, turn)
    assert after_final(scene, turn.run_id, "shutdown").get("restartExpectedMs"), "the restart began after the reply"
    after = back(turn, svc.wait_state(lambda s: s["state"] == "running" and s["restarts"] == before + 1,
                                      START_TIMEOUT, "the gateway back after its own restart"))
    assert after["pid"] == turn.pid, "the gateway restarted itself in place"
    assert f"gateway pid {turn.pid} exited" not in svc.log()[turn.since:]
    one_call_each(scene, (turn.text, turn), (new_turn_works(scene, "restart"), None))
    no_kill(svc, turn.since)


def test_a_reload_that_restarts_the_gateway_lets_a_turn_finish_first(scene: Scene) -> None:
    svc = scene.svc
    version = svc.status()["gatewayVersion"]  # NEW after the upgrade; OLD when run alone
    turn = turn_in_flight(scene, "reload")
    svc.rewrite_config(merge(svc.config, {"gateway": {"env": {"CLAWSVC_TEST_RELOADED": "1"}}}))
    svc.send_signal(signal.SIGHUP)
    svc.wait_log(r"reloaded .*; gateway\.env changed, restarting the gateway", 60, turn.since)
    svc.wait_log(SIGTERM_SENT.format(pid=turn.pid), 60, turn.since)
    drain_shown(svc, "starting")
    final_reply(scene, turn)
    a_new_gateway_after(scene, turn, "reload", version)


def test_a_stop_during_a_turn_lets_it_finish_and_its_reply_reach_events(scene: Scene) -> None:
    svc = scene.svc
    turn = turn_in_flight(scene, "stop")
    svc.send_signal(signal.SIGTERM)
    drain_shown(svc, "stopping")
    final_reply(scene, turn)
    assert svc.wait(DRAIN_TIMEOUT) == 0
    print(f"TIMING clawsvc exited 0 {time.monotonic() - turn.acted:.1f}s after the SIGTERM")
    assert after_final(scene, turn.run_id, "shutdown") == {"reason": "gateway stopping"}
    assert re.search(rf"gateway pid {turn.pid} exited with status 0\n", svc.log()[turn.since:])
    one_call_each(scene, (turn.text, turn))
    no_kill(svc, turn.since)
