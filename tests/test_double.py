"""The gateway double, driven as a real child process through a raw websocket-client connection."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import websocket
from double import DoubleProcess, pid_alive, start_double

TICK_MS = 150
_ids = itertools.count()


# -- a minimal protocol-4 client ---------------------------------------------------------------------------
def open_ws(gw: DoubleProcess, *, origin: bool = False, timeout: float = 5.0) -> tuple[websocket.WebSocket, dict]:
    """Open a socket and read the challenge the server sends first."""
    ws = websocket.create_connection(gw.url, timeout=timeout, suppress_origin=not origin)
    return ws, json.loads(ws.recv())


def connect_params(token: str, **overrides: Any) -> dict:
    params = {"minProtocol": 4, "maxProtocol": 4, "auth": {"token": token}, "role": "operator",
              "scopes": ["operator.admin"], "caps": [],
              "client": {"id": "gateway-client", "displayName": "test", "version": "0", "platform": "linux",
                         "mode": "backend"}}
    params.update(overrides)
    return params


def request(ws: websocket.WebSocket, method: str, params: dict | None = None) -> str:
    rid = f"r{next(_ids)}"
    ws.send(json.dumps({"type": "req", "id": rid, "method": method, "params": params or {}}))
    return rid


def frame(ws: websocket.WebSocket, skip_ticks: bool = True) -> dict:
    while True:
        msg = json.loads(ws.recv())
        if not (skip_ticks and msg.get("event") == "tick"):
            return msg


def response(ws: websocket.WebSocket, rid: str) -> dict:
    while True:
        msg = frame(ws)
        if msg.get("type") == "res" and msg.get("id") == rid:
            return msg


def call(ws: websocket.WebSocket, method: str, params: dict | None = None) -> dict:
    return response(ws, request(ws, method, params))


def handshake(gw: DoubleProcess, **overrides: Any) -> tuple[websocket.WebSocket, dict]:
    ws, _ = open_ws(gw)
    res = call(ws, "connect", connect_params(gw.token, **overrides))
    assert res["ok"], res
    return ws, res["payload"]


def close_frame(ws: websocket.WebSocket) -> tuple[int, str]:
    """Read until the server's close frame (websocket-client answers it), then drop the TCP connection."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            ws.shutdown()
            return int.from_bytes(data[:2], "big"), data[2:].decode()


def rejected(gw: DoubleProcess, params: dict, method: str = "connect") -> tuple[dict, tuple[int, str]]:
    ws, _ = open_ws(gw)
    try:
        res = call(ws, method, params)
        return res, close_frame(ws)
    finally:
        ws.close()


def attempt_connect(gw: DoubleProcess) -> dict:
    ws, _ = open_ws(gw)
    with closing(ws):
        return call(ws, "connect", connect_params(gw.token))


def silent_for(ws: websocket.WebSocket, seconds: float, control: bool = False) -> bool:
    """True when nothing at all arrives within `seconds` (a deliberate wait for an absence)."""
    ws.settimeout(seconds)
    try:
        ws.recv_data(control_frame=control)
    except websocket.WebSocketTimeoutException:
        return True
    return False


def requests_file(gw: DoubleProcess) -> Path:
    return gw.stdout_path.parent / "requests.jsonl"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("double")
    env = {"DOUBLE_TICK_MS": str(TICK_MS), "DOUBLE_HANDSHAKE_TIMEOUT": "0.5",
           "DOUBLE_EVENT_FILE": str(tmp / "requests.jsonl"),
           "DOUBLE_STDOUT_LINES": "plain line one\nplain line two", "DOUBLE_STDERR_LINES": "ERROR scripted failure"}
    with start_double(tmp, env=env, args=("--verbose", "--some-future-flag", "x")) as proc:
        yield proc


# -- default protocol behaviour ----------------------------------------------------------------------------
def test_challenge_then_hello_ok(gw):
    ws, challenge = open_ws(gw)
    with closing(ws):
        assert challenge["type"] == "event" and challenge["event"] == "connect.challenge"
        assert set(challenge["payload"]) == {"nonce", "ts", "capabilities"}
        res = call(ws, "connect", connect_params(gw.token, minProtocol=3, maxProtocol=5))
    hello = res["payload"]
    assert res["ok"] and hello["type"] == "hello-ok" and hello["protocol"] == 4
    assert hello["server"]["version"] == "double-1"
    assert {"buildId", "bootId", "connId"} <= set(hello["server"])
    assert "health" in hello["features"]["methods"] and "tick" in hello["features"]["events"]
    assert hello["snapshot"]["uptimeMs"] >= 0
    assert hello["auth"] == {"role": "operator", "scopes": ["operator.admin"]}
    assert hello["policy"] == {"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": TICK_MS}


def test_extra_flags_ignored_and_startup_lines_printed(gw):
    assert gw.popen.poll() is None
    gw.wait_for_output(rf"\[gateway\] listening on ws://127\.0\.0\.1:{gw.port}")
    gw.wait_for_output(r"(?m)^plain line one\nplain line two$")
    gw.wait_for_output(r"(?m)^ERROR scripted failure$", stream="stderr")


def test_origin_header_gets_no_scopes(gw):
    ws, _ = open_ws(gw, origin=True)
    with closing(ws):
        assert call(ws, "connect", connect_params(gw.token))["payload"]["auth"]["scopes"] == []
        status = call(ws, "status")
    assert status["error"]["code"] == "FORBIDDEN" and status["error"]["details"]["code"] == "MISSING_SCOPE"


def test_unknown_client_id_is_closed_1008(gw):
    client = {"id": "homebrew", "version": "0", "platform": "linux", "mode": "backend"}
    res, (code, reason) = rejected(gw, connect_params(gw.token, client=client))
    assert res["error"]["code"] == "INVALID_REQUEST" and "/client/id" in res["error"]["message"]
    assert code == 1008 and reason.startswith("invalid connect params")


def test_protocol_mismatch_is_closed_1002(gw):
    res, (code, _) = rejected(gw, connect_params(gw.token, minProtocol=3, maxProtocol=3))
    assert res["error"]["message"] == "protocol mismatch"
    assert res["error"]["details"]["code"] == "PROTOCOL_MISMATCH" and code == 1002


def test_wrong_token_is_closed_1008_and_never_logged(gw):
    wrong = "wrong-" + gw.token[::-1]
    res, (code, reason) = rejected(gw, connect_params(wrong))
    assert res["ok"] is False and res["error"]["code"] == "INVALID_REQUEST"
    assert res["error"]["message"] == "unauthorized: gateway token mismatch (provide gateway auth token)"
    assert res["error"]["details"]["code"] == "AUTH_TOKEN_MISMATCH" and code == 1008
    assert reason == res["error"]["message"]
    gw.wait_for_output("token_mismatch", stream="stderr")
    logged = gw.stdout() + gw.stderr() + requests_file(gw).read_text()
    assert wrong not in logged and gw.token not in logged


def test_request_before_connect_is_closed_1008(gw):
    res, (code, _) = rejected(gw, {}, method="health")
    assert res["error"]["message"] == "invalid handshake: first request must be connect" and code == 1008


def test_no_connect_within_handshake_timeout_closes_1000(gw):
    ws, _ = open_ws(gw)
    with closing(ws):
        assert close_frame(ws)[0] == 1000


def test_health_status_and_unknown_method(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        health, status, unknown = call(ws, "health"), call(ws, "status"), call(ws, "no.such.method")
    assert health["ok"] and health["payload"]["ok"] is True
    assert status["ok"] and status["payload"]["pid"] == gw.pid and status["payload"]["port"] == gw.port
    assert unknown["error"] == {"code": "INVALID_REQUEST", "message": "unknown method: no.such.method"}


def test_ticks_carry_consecutive_seq(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        ticks = [frame(ws, skip_ticks=False) for _ in range(3)]
    assert [t["event"] for t in ticks] == ["tick"] * 3 and all("ts" in t["payload"] for t in ticks)
    assert [t["seq"] for t in ticks] == [1, 2, 3]


def test_event_file_records_requests_with_token_masked(gw):
    ws, hello = handshake(gw)
    with closing(ws):
        call(ws, "health", {"probe": 1})
    path = requests_file(gw)
    mine = [json.loads(line) for line in path.read_text().splitlines()]
    mine = [r for r in mine if r["conn"] == hello["server"]["connId"]]
    assert [r["method"] for r in mine] == ["connect", "health"]
    assert mine[0]["params"]["auth"] == {"token": "***"} and mine[1]["params"] == {"probe": 1}
    assert gw.token not in path.read_text()


def test_http_probes(gw):
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}{path}", timeout=5) as resp:
            assert resp.status == 200


# -- scripted misbehaviour ---------------------------------------------------------------------------------
def test_garbage_frames_then_normal_service(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        rid = request(ws, "double.garbage")
        texts, binary = [], []
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_BINARY:
                binary.append(data)
                continue
            text = data.decode()
            if f'"id": "{rid}"' in text:
                break
            if '"tick"' not in text:
                texts.append(text)
        assert call(ws, "health")["ok"]
    assert texts[0] == "this is not json {"
    assert [json.loads(t) for t in texts[1:]] == [
        [1, 2, 3], {"type": "mystery", "payload": {"x": 1}}, {"type": "res", "ok": True, "payload": {"orphan": True}}]
    assert len(binary) == 1


def test_custom_garbage_frames(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        request(ws, "double.garbage", {"frames": ["{{{", {"type": "event"}]})
        assert ws.recv() == "{{{"
        assert frame(ws) == {"type": "event"}


def test_silence_stops_frames_but_not_pongs(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        assert call(ws, "double.silence")["ok"]
        request(ws, "health")
        assert silent_for(ws, 6 * TICK_MS / 1000)
        ws.ping(b"still there?")
        ws.settimeout(5)
        assert ws.recv_data(control_frame=True) == (websocket.ABNF.OPCODE_PONG, b"still there?")


def test_freeze_leaves_pings_unanswered(gw):
    ws, _ = handshake(gw)
    try:
        assert call(ws, "double.freeze")["ok"]
        ws.ping(b"anyone?")
        assert silent_for(ws, 1.0, control=True)
    finally:
        ws.shutdown()  # no close handshake: the server no longer reads


def test_flood_events_have_consecutive_seq(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        rid = request(ws, "double.flood", {"count": 500, "event": "burst"})
        seqs, seen = [], []
        while (msg := frame(ws, skip_ticks=False)).get("id") != rid:
            seqs.append(msg["seq"])
            if msg["event"] == "burst":
                seen.append(msg["payload"]["i"])
    assert seen == list(range(500))
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_seqgap_makes_the_next_event_jump(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        seqs = [call(ws, "double.event", {"event": "before-gap", "payload": None})["payload"]["seq"]]
        rid = request(ws, "double.seqgap", {"skip": 5})
        while (msg := frame(ws, skip_ticks=False)).get("id") != rid:
            seqs.append(msg["seq"])
        rid = request(ws, "double.flood", {"count": 3})
        while (msg := frame(ws, skip_ticks=False)).get("id") != rid:
            seqs.append(msg["seq"])
    steps = [b - a for a, b in itertools.pairwise(seqs)]
    assert sorted(steps) == [1] * (len(steps) - 1) + [6]


def test_huge_reply(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        res = call(ws, "double.huge", {"bytes": 1_000_000})
    assert len(res["payload"]["data"]) == 1_000_000


def test_legacy_json_rpc_frames(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        rid = request(ws, "double.legacy")
        legacy = []
        while (msg := frame(ws)).get("id") != rid:
            legacy.append(msg)
    assert all(m["jsonrpc"] == "2.0" for m in legacy)
    assert {"method": "channel.status"}.items() <= legacy[0].items()
    assert any("result" in m for m in legacy) and any("error" in m for m in legacy)


def test_sleep_replies_out_of_order(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        slow = request(ws, "double.sleep", {"ms": 300})
        fast = request(ws, "health")
        order = [frame(ws)["id"], frame(ws)["id"]]
    assert order == [fast, slow]


def test_arbitrary_event(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        rid = request(ws, "double.event", {"event": "shutdown", "payload": {"reason": "x", "restartExpectedMs": 900}})
        event = frame(ws)
        assert frame(ws)["id"] == rid
    assert event["event"] == "shutdown" and event["payload"]["restartExpectedMs"] == 900 and event["seq"] >= 1


def test_close_with_code(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        assert call(ws, "double.close", {"code": 4001, "reason": "gateway auth changed"})["ok"]
        assert close_frame(ws) == (4001, "gateway auth changed")


def test_bad_control_params(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        res = call(ws, "double.flood", {"count": "many"})
    assert res["error"]["code"] == "INVALID_REQUEST" and "count" in res["error"]["message"]


def test_log_lines_on_demand(gw):
    ws, _ = handshake(gw)
    with closing(ws):
        assert call(ws, "double.log", {"stream": "stderr", "lines": ["WARN one on demand", "two"]})["ok"]
    gw.wait_for_output(r"(?m)^WARN one on demand\ntwo$", stream="stderr")


def test_port_in_use_exits_1(gw, tmp_path):
    second = start_double(tmp_path, port=gw.port, wait=False)
    try:
        assert second.popen.wait(10) == 1
    finally:
        second.stop()
    assert "already listening" in second.stderr()


# -- process-level behaviour (one double each) -------------------------------------------------------------
def test_sigterm_sends_shutdown_then_1012_and_exits_0(tmp_path):
    with start_double(tmp_path, env={"DOUBLE_RESTART_EXPECTED_MS": "1500"}) as proc:
        ws, _ = handshake(proc)
        with closing(ws):
            proc.popen.send_signal(signal.SIGTERM)
            event = frame(ws)
            assert close_frame(ws)[0] == 1012
        assert proc.popen.wait(10) == 0
    assert event["event"] == "shutdown"
    assert event["payload"] == {"reason": "gateway stopping", "restartExpectedMs": 1500}


def test_startup_delay_then_unavailable_window(tmp_path):
    env = {"DOUBLE_STARTUP_DELAY": "1.5", "DOUBLE_UNAVAILABLE_FOR": "1.5"}
    with start_double(tmp_path, env=env, wait=False) as proc:
        proc.wait_for_output(r"\[gateway\] starting")
        assert not proc.accepts_tcp()
        proc.wait_listening()
        res, (code, _) = rejected(proc, connect_params(proc.token))
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/readyz", timeout=5)
        assert not_ready.value.code == 503
        assert res["error"] == {"code": "UNAVAILABLE", "message": "gateway starting; retry shortly", "retryable": True,
                                "retryAfterMs": 500, "details": {"reason": "startup-sidecars"}}
        assert code == 1013
        deadline = time.monotonic() + 10
        while (res := attempt_connect(proc))["ok"] is False:
            assert res["error"]["code"] == "UNAVAILABLE" and time.monotonic() < deadline
            time.sleep(res["error"]["retryAfterMs"] / 1000)
        assert res["payload"]["type"] == "hello-ok"


def test_protocol_and_max_payload_knobs(tmp_path):
    with start_double(tmp_path, env={"DOUBLE_PROTOCOL": "5", "DOUBLE_MAX_PAYLOAD": "4096"}) as proc:
        res, (code, _) = rejected(proc, connect_params(proc.token))
        assert res["error"]["details"]["expectedProtocol"] == 5 and code == 1002
        ws, hello = handshake(proc, maxProtocol=5)
        with closing(ws):
            assert hello["protocol"] == 5 and hello["policy"]["maxPayload"] == 4096
            request(ws, "health", {"padding": "x" * 8192})
            assert close_frame(ws)[0] == 1009


def test_exit_after_with_config_class_code(tmp_path):
    with start_double(tmp_path, env={"DOUBLE_EXIT_AFTER": "0.2", "DOUBLE_EXIT_CODE": "78"}, wait=False) as proc:
        assert proc.popen.wait(10) == 78
    assert "Missing config" in proc.stderr()


def test_missing_token_exits_78(tmp_path):
    with start_double(tmp_path, env={"OPENCLAW_GATEWAY_TOKEN": ""}, wait=False) as proc:
        assert proc.popen.wait(10) == 78
    assert "OPENCLAW_GATEWAY_TOKEN" in proc.stderr()


def test_ignored_sigterm_needs_sigkill(tmp_path):
    with start_double(tmp_path, env={"DOUBLE_IGNORE_SIGTERM": "1"}) as proc:
        proc.popen.send_signal(signal.SIGTERM)
        proc.wait_for_output("ignoring it", stream="stderr")
        handshake(proc)[0].close()
        assert proc.stop(timeout=0.5) == -signal.SIGKILL


def test_spawned_grandchild_survives_parent_but_not_group_kill(tmp_path):
    with start_double(tmp_path, env={"DOUBLE_SPAWN_CHILD": "1"}) as proc:
        child = int(proc.wait_for_output(r"\[double\] child pid (\d+)").group(1))
        assert os.getpgid(child) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(10)
        assert pid_alive(child)
        proc.stop()
        deadline = time.monotonic() + 10
        while pid_alive(child):
            assert time.monotonic() < deadline, "grandchild survived the process-group kill"
            time.sleep(0.02)


def test_double_exit_ends_process_with_code(tmp_path):
    with start_double(tmp_path) as proc:
        ws, _ = handshake(proc)
        with closing(ws):
            assert call(ws, "double.exit", {"code": 3})["ok"]
        assert proc.popen.wait(10) == 3


def test_hang_blocks_the_whole_process(tmp_path):
    with start_double(tmp_path) as proc:
        ws, _ = handshake(proc)
        try:
            assert call(ws, "double.hang")["ok"]
            request(ws, "health")
            assert silent_for(ws, 1.0)
        finally:
            ws.shutdown()
        with pytest.raises(websocket.WebSocketTimeoutException):
            open_ws(proc, timeout=1.0)
        proc.popen.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.popen.wait(1.0)
        assert proc.stop(timeout=0) == -signal.SIGKILL
