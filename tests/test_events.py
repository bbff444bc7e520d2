"""The event stream's buffer policy (clawsvc/service/events.py), without threads or sleeps: the clock is a number
passed in. Also the hub's bookkeeping and the CLI's readable lines."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from websocket import ABNF

from clawsvc.cli import main
from clawsvc.commands.control.events import readable
from clawsvc.gateway import frames
from clawsvc.gateway.frames import EVENT_MAX, PARSED_MAX, ConnectionStats, FrameCheck
from clawsvc.gateway.protocol import GatewayEvent, Response
from clawsvc.jsontext import RawJSON
from clawsvc.service import catalogue
from clawsvc.service.eventhub import EventHub
from clawsvc.service.events import Event as E
from clawsvc.service.events import Held, History, Outbox, dropped, hold, iso_time, wanted


def ev(n: int, name: str = "chat", source: str = "gateway") -> Held:
    return hold(E(1000.0 + n, source, name, {"n": n}, n))  # as the hub holds it


def event(n: int) -> E:
    return E(1000.0 + n, "gateway", "chat", {"n": n}, n)


def payloads(lines: list[bytes] | None) -> list[Any]:
    return [json.loads(line)["payload"] for line in lines or []]


def decoded(batch: list[Held] | None) -> list[dict[str, Any]]:
    assert batch is not None
    return [json.loads(e.json) for e in batch]


def numbers(batch: list[Held] | None) -> list[Any]:
    return [e["payload"].get("n", f"missed {e['payload'].get('count')}") for e in decoded(batch)]


def test_the_json_form() -> None:
    assert E(0.123, "gateway", "chat", {"a": 1}, 5).to_json() == {
        "time": "1970-01-01T00:00:00.123Z", "source": "gateway", "name": "chat", "payload": {"a": 1}, "seq": 5}
    assert "seq" not in E(0.0, "service", "state", {}).to_json()
    assert iso_time(1795899600.123) == "2026-11-28T21:00:00.123Z"


def test_iso_time_writes_what_datetime_would() -> None:
    rng = random.Random(20)
    moments = [rng.uniform(0, 4e9) for _ in range(20000)] + [rng.randrange(0, 4 * 10**9) + 0.9999996 + k * 1e-7
                                                             for k in range(5) for _ in range(200)]
    for when in sorted(moments) + moments:  # the same second again, and seconds out of order
        expected = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert iso_time(when) == expected, when


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
    assert batch is not None and decoded(batch)[3]["source"] == "service" and batch[3].name == "missed"
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
    assert numbers(history.recent(None)) == [3, 4, 5]
    assert history.recent(frozenset({"tick"})) == []
    assert numbers(history.recent(frozenset({"chat"}))) == [3, 4, 5]


def test_the_json_is_encoded_once_and_a_raw_payload_goes_in_as_it_is() -> None:
    held = hold(E(0.123, "gateway", "chat", RawJSON(b'[[],[]]'), 5))
    assert held.json == (b'{"time":"1970-01-01T00:00:00.123Z","source":"gateway","name":"chat","payload":[[],[]],'
                         b'"seq":5}')
    assert held.size == len(held.json) and held.name == "chat" and held.time == 0.123
    odd = json.loads(hold(E(0.0, "service", "state", {1, 2})).json)  # a set: JSON has no type for it
    assert odd["payload"] == "{1, 2}"
    loop: list[Any] = []
    loop.append(loop)
    assert json.loads(hold(E(0.0, "service", "state", loop)).json)["unencodable"] is True


def test_the_history_keeps_what_fits_in_its_bytes() -> None:
    big = [hold(E(float(n), "gateway", "big", RawJSON(b"[" + b"0," * 500 + b"0]"), n)) for n in range(10)]
    history = History(size=200, budget=3 * big[0].size + 10)
    for held in big:
        history.add(held)
    assert [json.loads(e.json)["seq"] for e in history.recent(None)] == [7, 8, 9]


def test_a_follower_holds_at_most_its_bytes_the_batch_being_sent_included() -> None:
    box = Outbox(None, capacity=1000, budget=3 * ev(1).size)
    for n in range(1, 5):  # 1..3 fit, 4 is dropped
        box.offer(ev(n))
    assert numbers(box.take()) == [1, 2, 3, "missed 1"]
    box.offer(ev(5))  # that batch still counts while it is being sent: no room
    assert numbers(box.take()) == ["missed 1"], "taking the next batch says the one before was sent"
    box.offer(ev(6))
    assert numbers(box.take()) == [6]


def test_the_hub_forgets_a_subscriber_at_once_and_never_blocks_on_a_full_one() -> None:
    hub = EventHub(history=5, capacity=2)
    slow, fast = hub.subscribe(None), hub.subscribe(frozenset({"chat"}))
    try:
        assert hub.subscribers() == 2
        for n in range(1, 101):
            hub.publish(event(n))
        assert payloads(fast.take()) == [{"n": 1}, {"n": 2}, {"count": 98}]
        hub.publish(event(101))
        assert payloads(fast.take()) == [{"n": 101}], "the slow one held nobody up"
        assert payloads(slow.take()) == [{"n": 1}, {"n": 2}, {"count": 99}]
        assert [e["payload"]["n"] for e in json.loads(hub.history(None))] == [97, 98, 99, 100, 101]
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


def test_an_event_frame_over_the_cap_is_never_parsed() -> None:
    """Not JSON past its first members: parsing it would count it malformed; its size was checked first."""
    check = FrameCheck("ws://test", ConnectionStats())
    broken = b'{"type":"event","event":"chat","payload":[' + b"[]," * EVENT_MAX + b'oops,"seq":7}'
    assert check.parse(ABNF.OPCODE_TEXT, broken) == GatewayEvent("chat", {"truncated": True, "bytes": len(broken)}, 7)
    legacy = b'{"jsonrpc": "2.0", "method": "chat", "params": "' + b"x" * EVENT_MAX + b'"}'
    assert check.parse(ABNF.OPCODE_TEXT, legacy) == GatewayEvent("chat", {"truncated": True, "bytes": len(legacy)},
                                                                 None)
    assert check.stats.malformed == 0


def test_a_kept_event_over_a_few_kib_goes_on_as_its_json_text() -> None:
    check = FrameCheck("ws://test", ConnectionStats())
    nested = [[] for _ in range(PARSED_MAX)]
    frame = check.parse(ABNF.OPCODE_TEXT, json.dumps({"type": "event", "event": "big", "payload": nested,
                                                      "seq": 3}).encode())
    assert isinstance(frame, GatewayEvent) and isinstance(frame.payload, RawJSON) and frame.seq == 3
    assert frame.payload == json.dumps(nested, separators=(",", ":")).encode() and json.loads(frame.payload) == nested
    small = check.parse(ABNF.OPCODE_TEXT, b'{"type":"event","event":"shutdown","payload":{"restartExpectedMs":5}}')
    assert small == GatewayEvent("shutdown", {"restartExpectedMs": 5}, None), "what the machine reads stays parsed"


def test_a_frame_over_what_clawsvc_parses_fails_its_request_or_is_dropped(monkeypatch: Any) -> None:
    monkeypatch.setattr(frames, "FRAME_MAX", 2 * EVENT_MAX)
    check = FrameCheck("ws://test", ConnectionStats())
    answer = b'{"type":"res","id":"r7","ok":true,"payload":"' + b"x" * 2 * EVENT_MAX + b'"}'
    failed = check.parse(ABNF.OPCODE_TEXT, answer)
    assert isinstance(failed, Response) and failed.id == "r7" and failed.error is not None
    assert failed.error.code == "TOO_LARGE" and str(len(answer)) in failed.error.message
    assert check.parse(ABNF.OPCODE_TEXT, answer[:EVENT_MAX] + b'"}') is not None, "a smaller answer is parsed"
    assert check.parse(ABNF.OPCODE_TEXT, b'{"x":"' + b"y" * 2 * EVENT_MAX + b'"}') is None
    assert check.stats.malformed == 1


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
    "readiness.failing": (["channel:telegram"], 300.0), "gateway.replaced": (7, "3 failed health checks"),
    "memory.high": (900 << 20, 800 << 20, "restart"),
    "service.failed": ("clawsvc.service", "exit-code", "exited", "1"),
    "upgrade.rolled-back": ("2026.9.7", "2026.9.6", "the canary did not come up"),
    "auth.rejected": (7, "gateway pid 7 rejects clawsvc's token: ..."),
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
