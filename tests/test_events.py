"""The event stream's buffer policy (clawsvc/service/events.py), without threads or sleeps: the clock is a number
passed in. Also the hub's bookkeeping and the CLI's readable lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websocket import ABNF

from clawsvc.cli import main
from clawsvc.commands.events import readable
from clawsvc.gateway.frames import EVENT_MAX, ConnectionStats, FrameCheck
from clawsvc.gateway.protocol import GatewayEvent
from clawsvc.service import catalogue
from clawsvc.service.eventhub import EventHub
from clawsvc.service.events import Event as E
from clawsvc.service.events import History, Outbox, dropped, iso_time, wanted


def ev(n: int, name: str = "chat", source: str = "gateway") -> E:
    return E(1000.0 + n, source, name, {"n": n}, n)


def numbers(batch: list[E] | None) -> list[Any]:
    assert batch is not None
    return [e.payload.get("n", f"missed {e.payload.get('count')}") for e in batch]


def test_the_json_form() -> None:
    assert E(0.123, "gateway", "chat", {"a": 1}, 5).to_json() == {
        "time": "1970-01-01T00:00:00.123Z", "source": "gateway", "name": "chat", "payload": {"a": 1}, "seq": 5}
    assert "seq" not in E(0.0, "service", "state", {}).to_json()
    assert iso_time(1795899600.123) == "2026-11-28T21:00:00.123Z"


def test_ticks_only_when_asked_by_name_and_names_filter_exactly() -> None:
    assert wanted(None, "chat") and not wanted(None, "tick")
    assert wanted(frozenset({"tick"}), "tick") and not wanted(frozenset({"tick"}), "chat")
    box = Outbox(frozenset({"gateway.spawned", "tick"}), capacity=10)
    for event in (ev(1), ev(2, "tick"), ev(3, "gateway.spawned", "service"), ev(4, "state", "service")):
        box.offer(event)
    assert numbers(box.take()) == [2, 3]


def test_overflow_drops_the_newest_counts_them_and_says_so_where_the_gap_is() -> None:
    box = Outbox(None, capacity=3)
    for n in range(1, 9):  # 1..3 fit, 4..8 are dropped
        box.offer(ev(n))
    batch = box.take()
    assert numbers(batch) == [1, 2, 3, "missed 5"]
    assert batch is not None and batch[3].to_json()["source"] == "service" and batch[3].name == "missed"
    assert batch[3].time == ev(8).time, "the missed record is dated at the last dropped event"
    for n in range(9, 13):  # 9..11 fit, 12 is dropped
        box.offer(ev(n))
    assert numbers(box.take()) == [9, 10, 11, "missed 1"], "the count starts again from zero"
    box.offer(ev(13))
    assert numbers(box.take()) == [13]
    assert box.take() == []


def test_events_a_subscriber_does_not_want_never_count_as_missed() -> None:
    box = Outbox(None, capacity=1)
    box.offer(ev(1))
    for n in range(2, 50):
        box.offer(ev(n, "tick"))
    assert numbers(box.take()) == [1]
    assert box.take() == []


def test_the_writer_is_woken_once_when_idle_and_not_while_busy() -> None:
    box = Outbox(None, capacity=10)
    assert box.offer(ev(1)) is False, "not idle yet: the writer has not asked"
    assert numbers(box.take()) == [1]
    assert box.take() == []  # idle from now on
    assert box.offer(ev(2)) is True
    assert box.offer(ev(3)) is False, "one wake-up is enough"
    assert numbers(box.take()) == [2, 3]


def test_close_lets_the_writer_drain_then_ends() -> None:
    box = Outbox(None, capacity=10)
    box.offer(ev(1))
    box.close()
    box.offer(ev(2))
    assert numbers(box.take()) == [1]
    assert box.take() is None
    idle = Outbox(None)
    assert idle.take() == [] and idle.close() is True, "an idle writer is woken to see the end"


def test_a_writer_blocked_longer_than_the_bound_is_stuck_by_the_injected_clock() -> None:
    box = Outbox(None, stuck_after=60.0)
    box.sending(100.0)
    assert not box.stuck(159.9)
    box.sending(150.0)  # still the same blocked write: the first moment counts
    assert box.stuck(160.0)
    box.sent()
    assert not box.stuck(1000.0)
    box.sending(1000.0)
    assert not box.stuck(1059.0) and box.stuck(1060.0)
    last = dropped(5.0, 60.0).to_json()
    assert last["name"] == "dropped" and "60s" in last["payload"]["reason"]


def test_a_closing_socket_gives_a_blocked_writer_a_second_not_a_minute() -> None:
    box = Outbox(None, stuck_after=60.0)
    box.sending(100.0)
    assert not box.stuck(101.5)
    box.close()
    assert box.stuck(101.5) and not Outbox(None, stuck_after=60.0).stuck(101.5)


def test_history_keeps_the_last_non_tick_events() -> None:
    history = History(size=3)
    for n in range(1, 6):
        history.add(ev(n))
        history.add(ev(100 + n, "tick"))
    assert [e.payload["n"] for e in history.recent(None)] == [3, 4, 5]
    assert history.recent(frozenset({"tick"})) == []
    assert [e.payload["n"] for e in history.recent(frozenset({"chat"}))] == [3, 4, 5]


def test_the_hub_forgets_a_subscriber_at_once_and_never_blocks_on_a_full_one() -> None:
    hub = EventHub(history=5, capacity=2)
    slow, fast = hub.subscribe(None), hub.subscribe(frozenset({"chat"}))
    try:
        assert hub.subscribers() == 2
        for n in range(1, 101):
            hub.publish(ev(n))
        assert [e["payload"] for e in fast.take() or []] == [{"n": 1}, {"n": 2}, {"count": 98}]
        hub.publish(ev(101))
        assert [e["payload"]["n"] for e in fast.take() or []] == [101], "the slow one held nobody up"
        assert [e["payload"] for e in slow.take() or []] == [{"n": 1}, {"n": 2}, {"count": 99}]
        assert [e["payload"]["n"] for e in hub.history(None)] == [97, 98, 99, 100, 101]
    finally:
        slow.close()
    assert hub.subscribers() == 1
    fast.close()
    assert hub.subscribers() == 0


def test_readable_lines() -> None:
    state = {"time": "2026-11-28T21:00:00.123Z", "source": "service", "name": "state",
             "payload": {"from": "starting", "to": "running", "cause": None}}
    assert readable(state) == "2026-11-28T21:00:00.123Z service state: starting -> running"
    chat = {"time": "T", "source": "gateway", "name": "chat", "payload": {"text": "x" * 500, "nl": "a\nb"}, "seq": 3}
    line = readable(chat)
    assert line.startswith('T gateway chat {"text":"xxx') and len(line) < 240 and "\n" not in line
    odd = {"time": "T", "source": "service", "name": "state", "payload": {"unexpected": 1}}
    assert readable(odd) == 'T service state {"unexpected":1}'
    exited = {"time": "T", "source": "service", "name": "gateway.exited",
              "payload": {"pid": 7, "status": "killed by SIGKILL", "returncode": None, "signal": 9}}
    assert readable(exited) == "T service gateway.exited: pid 7 killed by SIGKILL"
    assert json.loads(json.dumps(chat)) == chat


def test_an_event_frame_over_the_cap_is_passed_on_as_its_size() -> None:
    check = FrameCheck("ws://test", ConnectionStats())
    small = json.dumps({"type": "event", "event": "chat", "payload": {"text": "hi"}, "seq": 1}).encode()
    big = json.dumps({"type": "event", "event": "chat", "payload": {"text": "x" * EVENT_MAX}, "seq": 2}).encode()
    assert check.parse(ABNF.OPCODE_TEXT, small) == GatewayEvent("chat", {"text": "hi"}, 1)
    assert check.parse(ABNF.OPCODE_TEXT, big) == GatewayEvent("chat", {"truncated": True, "bytes": len(big)}, 2)


class _FakeFeed:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Handler:
    """Subscribing hands out a fake feed; `during` runs inside subscribe (to stage a race with close())."""

    def __init__(self, during: Any = None) -> None:
        self.feeds: list[_FakeFeed] = []
        self.during = during

    def subscribe(self, names: Any) -> _FakeFeed:
        if self.during is not None:
            self.during()
        self.feeds.append(_FakeFeed())
        return self.feeds[-1]


def _serve_one(followers: Any) -> dict[str, Any]:
    import socket

    from clawsvc.control.stream import Follow

    ours, theirs = socket.socketpair()
    with theirs:
        followers.serve(ours, Follow(None), None)
        theirs.settimeout(5)
        return json.loads(theirs.recv(65536).splitlines()[0])


def test_a_follower_that_races_the_close_is_refused_and_its_feed_ended() -> None:
    from clawsvc.control.stream import Followers

    handler = _Handler()
    followers = Followers(handler, 0)  # type: ignore[arg-type]
    handler.during = followers.close  # close() lands between the first check and the subscription
    reply = _serve_one(followers)
    assert reply["error"]["code"] == "UNAVAILABLE" and handler.feeds[0].closed
    assert followers._count == 0 and not followers._feeds


def test_a_follower_whose_thread_cannot_start_gives_back_its_feed_and_place(monkeypatch: Any) -> None:
    from clawsvc.control import stream

    def no_thread(*args: Any) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(stream, "start_thread", no_thread)
    handler = _Handler()
    followers = stream.Followers(handler, 0)  # type: ignore[arg-type]
    reply = _serve_one(followers)
    assert reply["error"]["code"] == "BUSY" and handler.feeds[0].closed
    assert followers._count == 0 and not followers._feeds


# ------------------------------------------------------------------ the catalogue (clawsvc/service/catalogue.py)

SAMPLES: dict[str, tuple[Any, ...]] = {
    "state": ("starting", "running", None), "gateway.spawned": (7,), "gateway.exited": (7, "exited 0", 0, None),
    "restart": ("gateway pid 7 exited 1", 2, 1.5), "restart.requested": ("asked",),
    "health.failed": (1, 3, "timeout"),
    "readiness": (False, ["channel:telegram"]), "reload": (True, ["gateway.port"], None), "ready": ("2026.9.6", 7),
    "error": ("gave up", 1), "missed": (4,), "dropped": ("too slow",),
}


def test_every_service_event_renders_its_own_payload() -> None:
    assert set(SAMPLES) == set(catalogue.SERVICE), "a new event needs a sample here"
    for name, kind in catalogue.SERVICE.items():
        emit = kind(*SAMPLES[name])
        assert (emit.name, emit.source) == (name, "service")
        assert list(emit.payload) == list(kind.fields)
        line = readable({"time": "T", "source": "service", "name": name, "payload": emit.payload})
        assert line.startswith(f"T service {name}: ") and "{" not in line, line


def test_an_event_made_with_the_wrong_number_of_values_is_refused() -> None:
    with pytest.raises(TypeError, match=r"event gateway\.spawned takes 1 values"):
        catalogue.SPAWNED(1, 2)


def test_a_payload_without_the_events_fields_or_of_other_types_is_shown_as_json() -> None:
    missing = {"time": "T", "source": "service", "name": "restart", "payload": {"reason": "x", "attempt": 1}}
    assert readable(missing) == 'T service restart {"reason":"x","attempt":1}'
    wrong = {"time": "T", "source": "service", "name": "restart",
             "payload": {"reason": "x", "attempt": 1, "delay": "soon"}}
    assert readable(wrong).startswith('T service restart {"reason"')


def test_the_service_publishes_no_event_outside_the_catalogue() -> None:
    """Every Emit of clawsvc's own comes from a catalogue Kind; only the gateway's events pass through by name."""
    service = Path(catalogue.__file__).parent
    for path in service.glob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "Emit(" in line and path.name not in ("catalogue.py", "effects.py", "executor.py"):
                assert '"gateway"' in line, f"{path.name}:{number}: {line.strip()}"


def test_events_names_lists_the_whole_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["events", "--names"]) == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0]: line.split()[1] for line in lines}
    assert {name: "service" for name in catalogue.SERVICE}.items() <= listed.items()
    assert {name: "gateway" for name in catalogue.GATEWAY}.items() <= listed.items()
    assert all(len(line.split(None, 2)) == 3 for line in lines), "every name has a description"
