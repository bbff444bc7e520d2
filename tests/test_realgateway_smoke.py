"""The real gateway as tests/realgw.py starts it: protocol 4 handshake, scopes, health and status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import websocket
from realgw import QUIET_ENV, GatewayError, RealGateway, call, connect, gateway_env

from clawsvc.commands.runtime.provision import Installation

pytestmark = pytest.mark.realgateway


def test_server_speaks_first_with_a_challenge(real_gateway: RealGateway) -> None:
    ws = websocket.create_connection(real_gateway.url, timeout=10, suppress_origin=True)
    try:
        frame = json.loads(ws.recv())
    finally:
        ws.close()
    assert frame["type"] == "event" and frame["event"] == "connect.challenge"
    assert isinstance(frame["payload"]["nonce"], str) and frame["payload"]["nonce"]


def test_hello_ok_on_protocol_4_with_admin_scope(real_gateway: RealGateway, gateway_install: Installation) -> None:
    ws, hello = connect(real_gateway.url, real_gateway.token)
    ws.close()
    assert hello["type"] == "hello-ok" and hello["protocol"] == 4
    assert hello["server"]["version"] == gateway_install.version
    assert "operator.admin" in hello["auth"]["scopes"]
    assert {"health", "status"} <= set(hello["features"]["methods"])


def test_health_and_status_ok(real_gateway: RealGateway, gateway_install: Installation) -> None:
    ws, _hello = connect(real_gateway.url, real_gateway.token)
    try:
        health = call(ws, "health")
        status = call(ws, "status")
    finally:
        ws.close()
    assert health["ok"] is True
    assert status["runtimeVersion"] == gateway_install.version


def test_an_origin_header_gets_no_scopes(real_gateway: RealGateway) -> None:
    ws, hello = connect(real_gateway.url, real_gateway.token, origin="http://127.0.0.1")
    try:
        assert hello["auth"]["scopes"] == []
        with pytest.raises(GatewayError) as refused:
            call(ws, "status")
    finally:
        ws.close()
    assert refused.value.code == "FORBIDDEN"


def test_wrong_token_is_refused(real_gateway: RealGateway) -> None:
    with pytest.raises(GatewayError) as refused:
        connect(real_gateway.url, "not-the-token-" + real_gateway.token[:4])
    assert refused.value.details.get("code") == "AUTH_TOKEN_MISMATCH"
    assert not refused.value.retryable


def test_token_is_kept_off_the_command_line(real_gateway: RealGateway) -> None:
    cmdline = Path(f"/proc/{real_gateway.pid}/cmdline").read_bytes()
    environ = Path(f"/proc/{real_gateway.pid}/environ").read_bytes()
    assert real_gateway.token.encode() not in cmdline
    assert f"OPENCLAW_GATEWAY_TOKEN={real_gateway.token}".encode() in environ.split(b"\0")


def test_gateway_env_is_private_and_quiet(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = gateway_env(state, 40123)
    config = json.loads((state / "openclaw.json").read_text())
    assert config == {"gateway": {"mode": "local", "bind": "loopback", "port": 40123},
                      "logging": {"file": str(state / "gateway.log")}}
    assert QUIET_ENV.items() <= env.items()
    for key in ("HOME", "OPENCLAW_HOME", "TMPDIR", "OPENCLAW_STATE_DIR"):
        assert Path(env[key]).is_relative_to(state) and Path(env[key]).is_dir()
    assert "OPENCLAW_GATEWAY_TOKEN" not in env
