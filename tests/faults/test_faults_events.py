"""`clawsvc events` on the gateway double: a follower sees a restart and the gateway's events, a stopped
follower holds up neither `status`, the watchdog nor another follower and learns what it missed, the peer
check, the follower cap, history without --follow, not running, Ctrl-C and a closed pipe."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from another_user import needs_another_user
from faultkit import Callers, Services, cli, cli_argv, finish, ready, write_config
from service_proc import ServiceProcess, poll

from clawsvc import exitcodes
from clawsvc.control.stream import MAX_FOLLOWERS

NOBODY = 65534
# how often status is asked during the flood: asking back to back (a `clawsvc status` process each time, as this
# case once did) takes a core from the followers on 2 cores, and the one being served falls 1000 events behind
STATUS_EVERY = 0.2
FLOOD = 10000  # events: far more than a follower's buffer (1000) and the socket buffers hold
FOLLOW = ("events", "--follow", "--json")


class Follower:
    """A background `clawsvc events --follow --json ...` whose stdout lines are collected as they come.

    Its reader thread is the only reader of that stdout, up to EOF: a second one (communicate()) would take a
    share of the same pipe, and since print() writes the text and its newline in two writes when stdout is
    unbuffered (PYTHONUNBUFFERED), a lone newline could land here as a line of its own. Lines that are not
    JSON are kept in `junk` for the test to show."""

    def __init__(self, callers: Callers, svc: ServiceProcess, *args: str) -> None:
        self.popen = callers.start(svc, *FOLLOW, *args)
        self.lines: list[dict[str, Any]] = []
        self.junk: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="clawsvc-test-follower", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                with self._lock:
                    self.junk.append(line)
                continue
            with self._lock:
                self.lines.append(event)

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        """(exit code, stderr) once it has exited and its stdout is read to the end; AssertionError naming where
        it waits (/proc wchan) if it is still running at `timeout`."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"follower pid {self.popen.pid} still running after {timeout:g}s, waiting in "
                                 f"{_wchan(self.popen.pid)}") from None
        self._thread.join(timeout)
        assert self.popen.stderr is not None
        return code, self.popen.stderr.read()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.lines if name is None or e["name"] == name]

    def wait_for(self, name: str, timeout: float = 20.0) -> dict[str, Any]:
        return poll(lambda: next(iter(self.events(name)), None), timeout, f"a {name!r} event; got "
                    f"{[e['name'] for e in self.events()][-20:]}")


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text() or "(running)"
    except OSError:
        return "(unknown)"


@pytest.fixture
def followers_of(callers: Callers) -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    callers.close()  # kills what is still running; the reader threads then see EOF


def follow(started: list[Follower], callers: Callers, svc: ServiceProcess, *names: str) -> Follower:
    """A follower that is subscribed (it has seen a tick: ask for `tick` among the names)."""
    follower = Follower(callers, svc, *(arg for name in names for arg in ("--name", name)))
    started.append(follower)
    follower.wait_for("tick")
    return follower


def test_a_follower_sees_a_restart_then_the_gateway_events(services: Services, callers: Callers,
                                                          followers_of: list[Follower]) -> None:
    svc = services.start()
    old = ready(svc)["pid"]
    watcher = follow(followers_of, callers, svc, "tick", "state", "gateway.exited", "gateway.spawned", "chat")
    assert cli(svc, "restart-gateway").returncode == 0
    back = watcher.wait_for("gateway.spawned")
    new = back["payload"]["pid"]
    poll(lambda: [e for e in watcher.events("state") if e["payload"]["to"] == "running"], 20, "running again")
    assert cli(svc, "rpc", "double.event", json.dumps({"event": "chat", "payload": {"text": "hi"}})).returncode == 0
    chat = watcher.wait_for("chat")
    names = [(e["name"], e["payload"].get("to")) for e in watcher.events() if e["name"] != "tick"]
    assert names == [("state", "starting"), ("gateway.exited", None), ("gateway.spawned", None),
                     ("state", "running"), ("chat", None)], names
    assert watcher.events("gateway.exited")[0]["payload"] == {
        "pid": old, "status": "exited with status 0", "returncode": 0, "signal": None}
    assert new != old and new == svc.status()["pid"]
    assert chat["source"] == "gateway" and chat["payload"] == {"text": "hi"} and isinstance(chat["seq"], int)
    assert chat["time"].endswith("Z") and watcher.events("state")[0]["source"] == "service"
    poll(lambda: [e for e in watcher.events("tick") if e["time"] > back["time"]], 10, "a tick of the new gateway")
    assert "hi" not in svc.log(), "payloads stay out of clawsvc's log (even at debug level here)"


def test_a_stopped_follower_holds_up_nobody_and_learns_what_it_missed(services: Services, callers: Callers,
                                                                      followers_of: list[Follower]) -> None:
    # the double answers the health RPC only after its whole flood: FAST's 0.5 s health timeout would replace it
    svc = services.start(env={"WATCHDOG_USEC": "500000"}, extra={"health": {"interval": 10.0, "timeout": 10.0}})
    ready(svc)
    stopped = follow(followers_of, callers, svc, "tick", "flood")
    other = follow(followers_of, callers, svc, "tick", "flood")
    os.killpg(stopped.popen.pid, signal.SIGSTOP)
    try:
        mark = svc.peer.mark()
        flood = callers.start(svc, "rpc", "double.flood", json.dumps({"count": FLOOD}), "--timeout", "120")
        slowest = 0.0
        while flood.poll() is None:
            began = time.monotonic()
            assert svc.status(timeout=30)["state"] == "running"
            slowest = max(slowest, time.monotonic() - began)
            with contextlib.suppress(subprocess.TimeoutExpired):
                flood.wait(STATUS_EVERY)
        code, _, err = finish(flood)
        assert code == 0, err
        # a status held up by the stopped follower would wait out its 60 s stall; the bound leaves room for a
        # loaded machine
        assert slowest < 15.0, f"clawsvc status took {slowest:.2f}s during the flood"
        poll(lambda: len(other.events("flood")) + sum(e["payload"]["count"] for e in other.events("missed"))
             >= FLOOD, 60, "the other follower to be served to the end of the flood")
        assert other.events("flood")[-1]["payload"]["i"] > FLOOD - 1000, "served while the stopped one sleeps"
        pings = [d.at for d in svc.peer.find("^WATCHDOG=1", since=mark)]
        assert len(pings) >= 2 and max(b - a for a, b in itertools.pairwise(pings)) < 1.0, pings
    finally:
        os.killpg(stopped.popen.pid, signal.SIGCONT)
    missed = stopped.wait_for("missed")
    assert missed["source"] == "service" and missed["payload"]["count"] > 0
    poll(lambda: [e for e in stopped.events("tick") if e["time"] > missed["time"]], 10, "the stream to go on")
    got, lost = len(stopped.events("flood")), sum(e["payload"]["count"] for e in stopped.events("missed"))
    assert got < FLOOD and got + lost >= FLOOD, (got, lost)  # what was lost is counted (ticks too)


@needs_another_user
def test_another_uid_is_refused(open_services: Services) -> None:
    svc = open_services.start()
    ready(svc)
    svc.config_path.chmod(0o644)
    svc.control_socket.parent.chmod(0o711)  # let uid 65534 reach the server: SO_PEERCRED alone must refuse it
    svc.control_socket.chmod(0o666)
    for args in (("events",), ("events", "--follow"), ("events", "--follow", "--json", "--name", "tick")):
        result = cli(svc, *args, user=NOBODY)
        assert result.returncode == exitcodes.FAIL, (args, result.stderr)
        assert f"EACCES: uid {NOBODY} is not allowed to control clawsvc" in result.stderr
        assert result.stdout == ""


def test_followers_are_capped_apart_from_requests_and_one_that_leaves_is_forgotten_at_once(
        services: Services, callers: Callers, followers_of: list[Follower]) -> None:
    svc = services.start()
    ready(svc)
    crowd = [follow(followers_of, callers, svc, "tick") for _ in range(MAX_FOLLOWERS)]
    refused = cli(svc, "events", "--follow")
    assert refused.returncode == exitcodes.FAIL and "BUSY" in refused.stderr, refused.stderr
    assert cli(svc, "status").returncode == 0
    assert cli(svc, "events").returncode == 0, "history is a request, not a follower"
    os.killpg(crowd[0].popen.pid, signal.SIGKILL)
    newcomer = Follower(callers, svc, "--name", "tick")
    followers_of.append(newcomer)
    newcomer.wait_for("tick", timeout=10)


def test_history_without_follow_then_exit_0(services: Services) -> None:
    svc = services.start()
    pid = ready(svc)["pid"]
    text = cli(svc, "events")
    assert text.returncode == 0, text.stderr
    assert f"service gateway.spawned: pid {pid}" in text.stdout
    assert "service state: starting -> running" in text.stdout and " tick " not in text.stdout
    lines = [json.loads(line) for line in cli(svc, "events", "--json").stdout.splitlines()]
    assert [e["name"] for e in lines][:4] == ["state", "gateway.spawned", "ready", "state"]
    only = cli(svc, "events", "--json", "--name", "ready").stdout.splitlines()
    assert [json.loads(line)["payload"]["pid"] for line in only] == [pid]


def test_not_running_exits_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, {})
    for args in (("events",), ("events", "--follow")):
        result = subprocess.run([sys.executable, "-m", "clawsvc", *args, "-c", str(config)], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == exitcodes.NOT_RUNNING, result.stderr
        assert "not running" in result.stderr


def test_ctrl_c_and_a_closed_pipe_end_quietly_with_0(services: Services, callers: Callers,
                                                    followers_of: list[Follower]) -> None:
    svc = services.start()
    ready(svc)
    command = " ".join(f"'{arg}'" for arg in cli_argv(svc, "events", "--follow", "--name", "tick"))
    head = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -1"], capture_output=True, text=True,
                          timeout=60)
    assert head.returncode == 0 and " gateway tick " in head.stdout and head.stderr == "", head
    follower = follow(followers_of, callers, svc, "tick")
    follower.popen.send_signal(signal.SIGINT)
    code, err = follower.finish()
    assert code == 0 and "Traceback" not in err, err
    assert follower.junk == []


# ---------------------------------------------------------------- memory: what is held, not what was sent

BIG_EVENTS = 220  # the 200 events of the history, and more
NESTED = 65_000  # [[], [], ...] as the double writes it: a 260 KB frame, under the 256 KiB kept whole
RSS_LIMIT = 200 * 1024 * 1024


def peak_rss(pid: int) -> int:
    """The most memory the process ever had resident (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.parametrize("stalled", [0, MAX_FOLLOWERS], ids=["no follower", "stalled followers"])
def test_events_of_nested_empty_lists_leave_clawsvc_in_bounded_memory(
        services: Services, callers: Callers, followers_of: list[Follower], stalled: int) -> None:
    """256 KB of `[[],[],...]` is ~6 MB of Python objects: kept parsed, 220 of them took clawsvc to ~910 MB with
    no follower at all. What clawsvc holds for others (history, each follower's outbox, batches being written)
    is counted in bytes of their JSON, and what does not fit is dropped and counted (`missed`)."""
    svc = services.start(extra={"health": {"interval": 30.0, "timeout": 30.0}})  # the double is busy flooding
    ready(svc)
    asleep = [follow(followers_of, callers, svc, "tick", "big") for _ in range(stalled)]
    for follower in asleep:
        os.killpg(follower.popen.pid, signal.SIGSTOP)
    try:
        flood = cli(svc, "rpc", "double.flood", json.dumps({"count": BIG_EVENTS, "event": "big", "nested": NESTED}),
                    "--timeout", "600", timeout=660)
        assert flood.returncode == 0, flood.stderr
        assert cli(svc, "rpc", "double.event", json.dumps({"event": "marker", "payload": {}})).returncode == 0
        poll(lambda: cli(svc, "events", "--json", "--name", "marker").stdout, 60, "the marker after the flood")
        peak = peak_rss(svc.pid)
        assert peak < RSS_LIMIT, f"clawsvc's peak RSS was {peak / 2 ** 20:.0f} MiB"
    finally:
        for follower in asleep:
            os.killpg(follower.popen.pid, signal.SIGCONT)
    kept = [json.loads(line) for line in cli(svc, "events", "--json", "--name", "big").stdout.splitlines()]
    assert kept and all(event["payload"] == [[]] * NESTED for event in kept)
    for follower in asleep:
        poll(lambda f=follower: f.events("missed"), 30, "a missed record for a follower that slept")
        got = len(follower.events("big"))
        assert got + sum(e["payload"]["count"] for e in follower.events("missed")) >= BIG_EVENTS
    assert svc.status()["state"] == "running"
