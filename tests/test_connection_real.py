"""GatewayConnection against the real OpenClaw gateway (provisioned by the shared fixtures)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from realgw import RealGateway

from clawsvc.gateway.connection import GatewayConnection
from clawsvc.gateway.protocol import AuthError, ConnectionLost, GatewayEvent, LinkDown, RpcError

pytestmark = pytest.mark.realgateway
READ_METHODS = ("health", "status", "system-presence", "last-heartbeat")


class Recorder:
    def __init__(self) -> None:
        self.events: list[GatewayEvent] = []
        self.downs: list[LinkDown] = []
        self.down_seen = threading.Event()
        self.down_at = 0.0

    def on_event(self, event: GatewayEvent) -> None:
        self.events.append(event)

    def on_down(self, down: LinkDown) -> None:
        self.down_at = time.monotonic()
        self.downs.append(down)
        self.down_seen.set()


@pytest.fixture
def own_gateway(gateway_install, tmp_path) -> Iterator[RealGateway]:
    """A gateway this test may kill (the module one is shared)."""
    with RealGateway(gateway_install, root=tmp_path / "gw") as gateway:
        yield gateway


def connected(gateway: RealGateway, recorder: Recorder | None = None) -> GatewayConnection:
    recorder = recorder or Recorder()
    conn = GatewayConnection(gateway.url, gateway.token, verify_peer=None, on_event=recorder.on_event,
                             on_down=recorder.on_down)
    conn.connect()
    return conn


def test_handshake_health_and_status_with_scopes(real_gateway):
    conn = connected(real_gateway)
    try:
        hello = conn.hello
        assert hello is not None and hello.protocol == 4
        assert "operator.admin" in hello.scopes and hello.role == "operator"
        assert {"health", "status"} <= hello.methods and "tick" in hello.events
        assert hello.tick_interval > 0 and hello.max_payload > 1024
        assert conn.rpc("health")["ok"] is True
        assert isinstance(conn.rpc("status"), dict)
        with pytest.raises(RpcError, match=r"unknown method: no\.such"):
            conn.rpc("no.such")
    finally:
        conn.close()


def test_wrong_token_raises_the_gateways_auth_error(real_gateway):
    conn = GatewayConnection(real_gateway.url, "not-the-token-0123456789", verify_peer=None)
    with pytest.raises(AuthError) as info:
        conn.connect()
    assert "token mismatch" in info.value.message and info.value.detail_code == "AUTH_TOKEN_MISMATCH"
    assert "not-the-token-0123456789" not in str(info.value)
    assert not conn.connected


def test_32_concurrent_rpcs_from_8_threads(real_gateway):
    conn = connected(real_gateway)
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: conn.rpc(READ_METHODS[i % 4]), range(32)))
        assert len(results) == 32
        assert all(results[i]["ok"] is True for i in range(0, 32, 4))  # health
        assert all(isinstance(results[i], dict) for i in range(1, 32, 4))  # status
    finally:
        conn.close()


def test_sigkill_fails_every_pending_rpc_quickly(own_gateway):
    recorder = Recorder()
    conn = connected(own_gateway, recorder)
    failed_at: list[float] = []

    def call(method: str) -> None:
        try:
            conn.rpc(method, timeout=60)
        except ConnectionLost:
            failed_at.append(time.monotonic())

    pgid = own_gateway.pid
    os.killpg(pgid, signal.SIGSTOP)  # freeze it so the calls are surely pending when it dies
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, READ_METHODS[i % 4]) for i in range(8)]
        deadline = time.monotonic() + 10
        while len(conn._pending) < 8 and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert len(conn._pending) == 8
        reaped: list[float] = []
        reaper = threading.Thread(target=lambda: (own_gateway.popen.wait(30), reaped.append(time.monotonic())))
        reaper.start()
        killed = time.monotonic()
        os.killpg(pgid, signal.SIGKILL)
        for future in futures:
            future.result(30)
        reaper.join(30)
    assert len(failed_at) == 8
    worst = max(failed_at) - killed
    print(f"\nSIGKILL -> gateway reaped {(reaped[0] - killed) * 1000:.1f} ms, link down "
          f"{(recorder.down_at - killed) * 1000:.1f} ms, all 8 pending RPCs failed {worst * 1000:.1f} ms")
    assert worst < 5.0
    assert len(recorder.downs) == 1 and not recorder.downs[0].local
    conn.close()


def test_sigterm_reports_shutdown_then_1012_with_reason(own_gateway):
    recorder = Recorder()
    conn = connected(own_gateway, recorder)
    os.kill(own_gateway.pid, signal.SIGTERM)
    assert recorder.down_seen.wait(30)
    (down,) = recorder.downs
    assert down.code == 1012 and down.reason and not down.local
    shutdown = [event for event in recorder.events if event.name == "shutdown"]
    assert len(shutdown) == 1 and shutdown[0].payload.get("reason") == "gateway stopping"
    assert not conn.connected
