"""The pure protocol layer: frames, connect params, hello-ok parsing and error classification."""

from __future__ import annotations

import json

import pytest

from clawsvc import __version__
from clawsvc.gateway.hello import DEFAULT_MAX_PAYLOAD, DEFAULT_TICK_INTERVAL, connect_params, parse_hello
from clawsvc.gateway.protocol import (
    AuthError,
    GatewayError,
    GatewayEvent,
    LinkDown,
    MalformedFrame,
    ProtocolMismatchError,
    Response,
    RetryableError,
    RpcError,
    TransportError,
    encode_request,
    error_from_close,
    error_from_reply,
    parse_close,
    parse_frame,
)
from clawsvc.logs import register_secret

HELLO = {
    "type": "hello-ok", "protocol": 4,
    "server": {"version": "2026.9.6", "buildId": "b1", "bootId": "boot", "connId": "c-1"},
    "features": {"methods": ["health", "status", 7], "events": ["tick", "shutdown"]},
    "snapshot": {"uptimeMs": 10},
    "auth": {"role": "operator", "scopes": ["operator.admin"]},
    "policy": {"maxPayload": 26214400, "maxBufferedBytes": 52428800, "tickIntervalMs": 30000},
}


def res_error(error: dict) -> str:
    return json.dumps({"type": "res", "id": "r1", "ok": False, "error": error})


def test_connect_params_are_exactly_what_the_gateway_accepts():
    params = connect_params("tok-123456")
    assert set(params) == {"minProtocol", "maxProtocol", "client", "auth", "role", "scopes", "caps"}
    assert (params["minProtocol"], params["maxProtocol"]) == (3, 4)
    assert params["client"] == {"id": "gateway-client", "displayName": "clawsvc", "version": __version__,
                                "platform": "linux", "mode": "backend"}
    assert params["auth"] == {"token": "tok-123456"}
    assert (params["role"], params["scopes"], params["caps"]) == ("operator", ["operator.admin"], [])


def test_encode_request_leaves_out_absent_params():
    assert json.loads(encode_request("r1", "health")) == {"type": "req", "id": "r1", "method": "health"}
    assert json.loads(encode_request("r2", "x", {"a": [1]}))["params"] == {"a": [1]}


def test_response_and_event_frames():
    ok = parse_frame('{"type":"res","id":"r7","ok":true,"payload":{"x":1}}')
    assert ok == Response("r7", {"x": 1}, None)
    event = parse_frame('{"type":"event","event":"tick","payload":{"ts":5},"seq":12}')
    assert event == GatewayEvent("tick", {"ts": 5}, 12)
    assert parse_frame('{"type":"event","event":"health","seq":true}') == GatewayEvent("health", None, None)


def test_unknown_method_is_an_rpc_error_with_code_and_message():
    frame = parse_frame(res_error({"code": "INVALID_REQUEST", "message": "unknown method: x"}))
    assert isinstance(frame, Response) and isinstance(frame.error, RpcError)
    assert (frame.error.code, frame.error.message) == ("INVALID_REQUEST", "unknown method: x")
    assert str(frame.error) == "INVALID_REQUEST: unknown method: x"


@pytest.mark.parametrize("data, reason", [
    ("not json {", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"type":"mystery"}', "unknown frame type"),
    ('{"type":"res","ok":true,"payload":1}', "without an id"),
    ('{"type":"res","id":"r1"}', "neither ok:true nor an error"),
    ('{"type":"event","payload":1}', "event without a name"),
    (b"\x00\x01", "binary frame"),
    ('{"jsonrpc":"2.0","id":3,"method":"ask"}', "not supported"),
    ('{"jsonrpc":"2.0","id":3}', "neither result nor error"),
])
def test_malformed_frames_raise_with_a_reason(data, reason):
    with pytest.raises(MalformedFrame, match=reason):
        parse_frame(data)


def test_legacy_jsonrpc_responses_and_notifications():
    assert parse_frame('{"jsonrpc":"2.0","id":5,"result":{"ok":true}}') == Response("5", {"ok": True}, None)
    failed = parse_frame('{"jsonrpc":"2.0","id":"r9","error":{"code":-32601,"message":"Method not found"}}')
    assert isinstance(failed, Response) and isinstance(failed.error, RpcError)
    assert (failed.id, failed.error.code, failed.error.message) == ("r9", "METHOD_NOT_FOUND", "Method not found")
    status = parse_frame('{"jsonrpc":"2.0","method":"channel.status","params":{"channel":"tg"}}')
    assert status == GatewayEvent("channel.status", {"channel": "tg"}, None)


def test_unavailable_is_retryable_after_retry_after_ms():
    error = error_from_reply({"code": "UNAVAILABLE", "message": "gateway starting; retry shortly",
                              "retryable": True, "retryAfterMs": 500, "details": {"reason": "startup-sidecars"}})
    assert isinstance(error, RetryableError)
    assert error.retry_after == 0.5 and error.details == {"reason": "startup-sidecars"}
    plain = error_from_reply({"code": "BUSY", "message": "later", "retryable": True})
    assert isinstance(plain, RetryableError) and plain.retry_after is None


def test_token_mismatch_is_an_auth_error():
    error = error_from_reply({"code": "INVALID_REQUEST", "message": "unauthorized: gateway token mismatch",
                              "details": {"code": "AUTH_TOKEN_MISMATCH"}})
    assert isinstance(error, AuthError)
    assert str(error) == "INVALID_REQUEST: unauthorized: gateway token mismatch [AUTH_TOKEN_MISMATCH]"


def test_missing_scope_stays_an_rpc_error():
    error = error_from_reply({"code": "FORBIDDEN", "message": "missing scope: operator.read",
                              "details": {"code": "MISSING_SCOPE"}})
    assert type(error) is RpcError and error.detail_code == "MISSING_SCOPE"


def test_protocol_mismatch_names_both_versions():
    error = error_from_reply({"code": "INVALID_REQUEST", "message": "protocol mismatch",
                              "details": {"code": "PROTOCOL_MISMATCH", "expectedProtocol": 5}})
    assert isinstance(error, ProtocolMismatchError)
    assert "gateway speaks protocol 5" in str(error) and "clawsvc speaks 3..4" in str(error)


@pytest.mark.parametrize("code, kind", [
    (1013, RetryableError), (1012, RetryableError), (1008, AuthError), (4001, AuthError),
    (1002, ProtocolMismatchError), (1000, TransportError), (None, TransportError),
])
def test_close_codes_are_classified(code, kind):
    error = error_from_close(code, "why")
    assert type(error) is kind
    assert "why" in str(error)


def test_close_frame_payload():
    assert parse_close(b"\x03\xf4service restart") == (1012, "service restart")
    assert parse_close(b"") == (None, "")


def test_hello_ok_is_parsed_into_typed_fields():
    hello = parse_hello(HELLO)
    assert (hello.protocol, hello.server_version, hello.build_id, hello.conn_id) == (4, "2026.9.6", "b1", "c-1")
    assert hello.methods == {"health", "status"} and hello.events == {"tick", "shutdown"}
    assert (hello.tick_interval, hello.max_payload) == (30.0, 26214400)
    assert (hello.role, hello.scopes) == ("operator", ("operator.admin",))


def test_hello_ok_without_policy_gets_defaults():
    hello = parse_hello({"type": "hello-ok", "protocol": 3})
    assert (hello.tick_interval, hello.max_payload, hello.scopes) == (DEFAULT_TICK_INTERVAL, DEFAULT_MAX_PAYLOAD, ())


def test_hello_ok_with_an_unsupported_protocol_is_a_mismatch():
    with pytest.raises(ProtocolMismatchError, match=r"protocol 5, clawsvc speaks 3\.\.4"):
        parse_hello({**HELLO, "protocol": 5})
    with pytest.raises(GatewayError, match="BAD_HELLO"):
        parse_hello({"type": "something"})


def test_error_text_is_one_line_and_masks_secrets():
    register_secret("s3cr3t-value-abc")
    error = GatewayError("X", "bad\n token s3cr3t-value-abc\there")
    assert str(error) == "X: bad token *** here"


def test_link_down_reads_well():
    assert str(LinkDown(1012, "service restart", False)) == "lost (code 1012): service restart"
    assert str(LinkDown(1000, "stop", True)) == "closed by clawsvc (code 1000): stop"
    assert str(LinkDown(None, "", False)) == "lost"
