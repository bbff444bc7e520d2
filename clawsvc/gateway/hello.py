"""The handshake's two messages: the params of clawsvc's `connect` request (who it is, the protocol versions it
speaks, the scopes it asks for) and the hello-ok answer that opens the link. Pure, like protocol.py."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from clawsvc import __version__
from clawsvc.gateway.protocol import (
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    GatewayError,
    ProtocolMismatchError,
    is_int,
    is_number,
    versions,
)

CLIENT_ID = "gateway-client"
CLIENT_MODE = "backend"
DISPLAY_NAME = "clawsvc"
ROLE = "operator"
ADMIN_SCOPE = "operator.admin"
DEFAULT_TICK_INTERVAL = 30.0
DEFAULT_MAX_PAYLOAD = 25 * 1024 * 1024


@dataclass(frozen=True)
class HelloOk:
    protocol: int
    server_version: str
    build_id: str | None
    conn_id: str | None
    methods: frozenset[str]
    events: frozenset[str]
    tick_interval: float
    max_payload: int
    role: str | None
    scopes: tuple[str, ...]


def client_platform() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform


def connect_params(token: str, scopes: tuple[str, ...] = (ADMIN_SCOPE,)) -> dict[str, Any]:
    return {
        "minProtocol": PROTOCOL_MIN,
        "maxProtocol": PROTOCOL_MAX,
        "client": {"id": CLIENT_ID, "displayName": DISPLAY_NAME, "version": __version__,
                   "platform": client_platform(), "mode": CLIENT_MODE},
        "auth": {"token": token},
        "role": ROLE,
        "scopes": list(scopes),
        "caps": [],
    }


def parse_hello(payload: Any) -> HelloOk:
    """The connect response's payload; raises ProtocolMismatchError or GatewayError("BAD_HELLO")."""
    if not isinstance(payload, dict) or payload.get("type") != "hello-ok":
        raise GatewayError("BAD_HELLO", "connect answer is not a hello-ok")
    protocol = payload.get("protocol")
    if not is_int(protocol):
        raise GatewayError("BAD_HELLO", f"hello-ok without a protocol version ({protocol!r})")
    if not PROTOCOL_MIN <= protocol <= PROTOCOL_MAX:
        raise ProtocolMismatchError("PROTOCOL_MISMATCH", f"hello-ok chose an unsupported version: {versions(protocol)}")
    server, features = _section(payload, "server"), _section(payload, "features")
    auth, policy = _section(payload, "auth"), _section(payload, "policy")
    tick_ms, max_payload = policy.get("tickIntervalMs"), policy.get("maxPayload")
    return HelloOk(
        protocol=protocol,
        server_version=str(server.get("version") or "unknown"),
        build_id=_opt_str(server.get("buildId")),
        conn_id=_opt_str(server.get("connId")),
        methods=_names(features.get("methods")),
        events=_names(features.get("events")),
        tick_interval=tick_ms / 1000.0 if is_number(tick_ms) and tick_ms > 0 else DEFAULT_TICK_INTERVAL,
        max_payload=max_payload if is_int(max_payload) and max_payload > 0 else DEFAULT_MAX_PAYLOAD,
        role=_opt_str(auth.get("role")),
        scopes=tuple(item for item in auth.get("scopes") or () if isinstance(item, str)),
    )


def _section(payload: dict[str, Any], key: str) -> dict[str, Any]:
    value = payload.get(key)
    return value if isinstance(value, dict) else {}


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _names(value: Any) -> frozenset[str]:
    return frozenset(item for item in value if isinstance(item, str)) if isinstance(value, list) else frozenset()
