"""The slow-model kit (tests/helpers/slow_model.py, tests/slowmodel_kit.py): the model server on its own, the
gateway config it writes, and real turns through it: against a real gateway and through a real `clawsvc run`."""

from __future__ import annotations

import http.client
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import slow_model_process
from helpers.slow_model import MODEL_ID, SlowModel
from helpers.slow_model_process import ModelProcess
from realgw import QUIET_ENV, free_port
from service_proc import ServiceProcess
from slowmodel_kit import (
    PROVIDER,
    START_TIMEOUT,
    EventsFollower,
    Link,
    SlowModelGateway,
    reply_text,
    send_turn,
    send_turn_through,
    slow_service_config,
)
from waiting import poll

from clawsvc.commands.runtime.provision import Installation
from clawsvc.gateway.spawnenv import unconfigured_flag

TURN_TIMEOUT = 180.0  # chat.send → final: a first turn prepares 8-12 s before its model call on a loaded machine


@pytest.fixture
def model() -> Iterator[SlowModel]:
    with SlowModel(reply="one two three four", delay=0.6, chunks=3) as server:
        yield server


def _post(model: SlowModel, body: dict[str, object]) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", model.port, timeout=10)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    return conn


def _chunks(body: str) -> list[dict[str, Any]]:
    """The JSON chunks of a streamed answer, which must end in `data: [DONE]`."""
    events = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def _streamed_text(body: str) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in _chunks(body))


def test_a_streamed_answer_comes_in_chunks_then_done(model: SlowModel) -> None:
    conn = _post(model, {"model": MODEL_ID, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    began = time.monotonic()
    body = conn.getresponse().read().decode()
    took = time.monotonic() - began
    conn.close()
    assert _streamed_text(body) == "one two three four"
    chunks = _chunks(body)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] > 0
    assert took >= 0.6
    (call,) = model.wait_calls(1, 5)
    assert model.wait_ended(call, 5).outcome == "finished" and call.stream and call.last_user_text == "hi"


def test_a_held_answer_streams_its_text_and_finishes_only_when_released(model: SlowModel) -> None:
    model.hold = threading.Event()
    conn = _post(model, {"model": MODEL_ID, "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    response = conn.getresponse()
    (call,) = model.wait_calls(1, 5)
    poll(lambda: call.chunks_sent == 4, 5, "the role chunk and the three pieces")
    with pytest.raises(AssertionError, match="still answering"):
        model.wait_ended(call, 1.0)  # held: no finish chunk while the test has not released it
    model.hold.set()
    body = response.read().decode()
    conn.close()
    assert model.wait_ended(call, 5).outcome == "finished" and body.rstrip().endswith("data: [DONE]")
    assert call.chunks_sent == 5


def test_models_and_an_unstreamed_answer(model: SlowModel) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", model.port, timeout=10)
    conn.request("GET", "/v1/models")
    assert json.loads(conn.getresponse().read())["data"][0]["id"] == MODEL_ID
    conn.close()
    conn = _post(model, {"model": MODEL_ID, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]})
    answer = json.loads(conn.getresponse().read())
    conn.close()
    assert answer["choices"][0]["message"]["content"] == "one two three four"
    (call,) = model.wait_calls(1, 5)
    model.wait_ended(call, 5)  # the server records the outcome once the last byte is written: after we read it
    assert [(c.stream, c.outcome, c.last_user_text) for c in model.calls] == [(False, "finished", "x")]


def test_a_client_that_goes_away_mid_answer_is_recorded(model: SlowModel) -> None:
    model.delay = 30.0
    response = _post(model, {"model": MODEL_ID, "stream": True, "messages": []}).getresponse()
    assert response.readline().startswith(b"data: ")  # the role chunk came; the rest is 30 s away
    (call,) = model.wait_calls(1, 5)
    response.close()  # closes the socket (the server said Connection: close)
    assert model.wait_ended(call, 5).outcome == "client-gone"  # seen while waiting, not at the next chunk
    assert call.chunks_sent == 1
    assert call.ended is not None and call.ended - call.arrived < 10


def test_close_ends_calls_in_flight_and_leaves_no_thread_or_port() -> None:
    before = set(threading.enumerate())
    server = SlowModel(delay=30.0).start()
    port = server.port
    streaming = _post(server, {"stream": True, "messages": []}).getresponse()  # kept: collected, it would hang up
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # kept alive, waiting for its next request
    idle.request("GET", "/v1/models")
    idle.getresponse().read()
    (call,) = server.wait_calls(1, 5)
    began = time.monotonic()
    server.close()
    assert time.monotonic() - began < 5
    assert call.outcome == "server-closed"
    assert set(threading.enumerate()) <= before
    idle.close()
    streaming.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_the_model_in_a_process_of_its_own_reports_its_calls() -> None:
    with ModelProcess(lambda *argv: list(argv), sys.executable, slow_model_process.__file__, "from afar", 0.3,
                      chunks=2) as model:
        conn = http.client.HTTPConnection("127.0.0.1", model.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", json.dumps({"stream": True, "messages": [
            {"role": "user", "content": "hi"}]}), {"Content-Type": "application/json"})
        body = conn.getresponse().read().decode()
        conn.close()
        assert model.arrived(1, 10) == [{"event": "arrived", "call": 0, "lastUserText": "hi"}]
        ended = model.ended(0, 10)
    assert _streamed_text(body) == "from afar"
    assert ended["outcome"] == "finished" and ended["seconds"] >= 0.3
    assert model.popen.returncode == 0  # it stopped when its stdin closed


def test_the_service_config_turns_providers_on_and_drops_allow_unconfigured(tmp_path: Path) -> None:
    installation = Installation(tmp_path / "node", tmp_path / "openclaw.mjs", "2026.9.6", "24.21.0")
    config = slow_service_config(tmp_path, installation, 40123, "http://127.0.0.1:40999/v1")
    env = config["gateway"]["env"]
    state = Path(config["gateway"]["state_dir"])
    written = json.loads((state / "openclaw.json").read_text())
    assert "OPENCLAW_SKIP_PROVIDERS" not in env
    assert {k: v for k, v in QUIET_ENV.items() if k != "OPENCLAW_SKIP_PROVIDERS"}.items() <= env.items()
    assert written["gateway"]["mode"] == "local"
    assert written["agents"]["defaults"]["model"]["primary"] == f"{PROVIDER}/{MODEL_ID}"
    assert written["models"]["providers"][PROVIDER]["baseUrl"] == "http://127.0.0.1:40999/v1"
    assert unconfigured_flag(str(state)) == []  # clawsvc starts it as configured: mode local must be there


@pytest.mark.realgateway
def test_a_turn_gets_one_model_call_and_its_reply_under_its_run_id(gateway_install: Installation) -> None:
    with SlowModel(reply="the slow model's reply", delay=3.0, chunks=3) as model, \
            SlowModelGateway(gateway_install, model.base_url) as gateway:
        link = Link(gateway.url, gateway.token)
        try:
            started = send_turn(link, "hello")
            events = link.chat_run(started["runId"], TURN_TIMEOUT)
        finally:
            link.close()
        (call,) = model.calls
        assert model.wait_ended(call, 10).outcome == "finished"
    assert started["status"] == "started"
    assert events[-1]["state"] == "final" and reply_text(events[-1]) == "the slow model's reply"
    assert [e["state"] for e in events].count("delta") >= 2  # the gateway streamed the model's progress
    assert {e["runId"] for e in events} == {started["runId"]}


@pytest.mark.realgateway
def test_a_turn_through_clawsvc_reaches_an_events_follower(gateway_install: Installation, tmp_path: Path) -> None:
    with SlowModel(reply="through clawsvc", delay=3.0, chunks=3) as model:
        svc = ServiceProcess.start(tmp_path, slow_service_config(tmp_path, gateway_install, free_port(),
                                                                 model.base_url))
        follower = None
        try:
            svc.peer.wait_for("^READY=1", START_TIMEOUT * 2)
            assert re.search(r"started gateway pid \d+: .* gateway run --port \d+ --bind loopback --auth token\n",
                             svc.log()), "clawsvc starts it as configured: no --allow-unconfigured"
            follower = EventsFollower(svc)
            follower.wait_subscribed(svc)
            started = send_turn_through(svc, "hello")
            events = follower.chat_run(started["runId"], TURN_TIMEOUT)
            assert svc.terminate(60) == 0
        finally:
            if follower is not None:
                follower.close()
            svc.close()
        assert [c.outcome for c in model.calls] == ["finished"]
    assert events[-1]["state"] == "final" and reply_text(events[-1]) == "through clawsvc"
