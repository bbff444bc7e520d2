"""GatewayConnection against the gateway double (a real child process speaking protocol 4)."""

from __future__ import annotations

import logging
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from double import DoubleProcess, free_port, start_double

from clawsvc.config import parse_config
from clawsvc.gateway import ports
from clawsvc.gateway.connection import GatewayConnection
from clawsvc.gateway.frames import Liveness
from clawsvc.gateway.hello import parse_hello
from clawsvc.gateway.peercheck import PeerCheck, PeerGone
from clawsvc.gateway.protocol import (
    AuthError,
    ConnectionLost,
    GatewayError,
    GatewayEvent,
    LinkDown,
    ProtocolMismatchError,
    RetryableError,
    RpcError,
    RpcTimeout,
    TransportError,
    UntrustedPeerError,
)
from clawsvc.service.connector import Connector, always
from clawsvc.service.messages import HandshakeDone, HandshakeFailed, HandshakeKind, Message

TICK_MS = 400
MAX_PAYLOAD = 65536


class Recorder:
    """Collects what the connection reports; wait() polls a condition with a deadline."""

    def __init__(self) -> None:
        self.events: list[GatewayEvent] = []
        self.downs: list[LinkDown] = []
        self.lock = threading.Lock()

    def on_event(self, event: GatewayEvent) -> None:
        with self.lock:
            self.events.append(event)

    def on_down(self, down: LinkDown) -> None:
        with self.lock:
            self.downs.append(down)

    def named(self, name: str) -> list[GatewayEvent]:
        with self.lock:
            return [event for event in self.events if event.name == name]

    @staticmethod
    def wait(condition: Callable[[], object], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while not condition():
            assert time.monotonic() < deadline, "condition not met before the deadline"
            pause.wait(0.01)


@pytest.fixture(scope="module")
def double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DoubleProcess]:
    env = {"DOUBLE_TICK_MS": str(TICK_MS), "DOUBLE_MAX_PAYLOAD": str(MAX_PAYLOAD)}
    with start_double(tmp_path_factory.mktemp("double"), env=env) as proc:
        yield proc


@pytest.fixture
def connect() -> Iterator[Callable[..., tuple[GatewayConnection, Recorder]]]:
    """Connect to a double (default: the module one); every connection is closed in teardown."""
    made: list[GatewayConnection] = []

    def make(proc: DoubleProcess, token: str | None = None, **options: float) -> tuple[GatewayConnection, Recorder]:
        recorder = Recorder()
        conn = GatewayConnection(proc.url, token or proc.token, verify_peer=None, handshake_timeout=10.0,
                                 on_event=recorder.on_event, on_down=recorder.on_down, **options)
        made.append(conn)
        conn.connect()
        return conn, recorder

    yield make
    for conn in made:
        conn.close()


def own_double(tmp_path: Path, request: pytest.FixtureRequest, **env: str) -> DoubleProcess:
    proc = start_double(tmp_path, env={"DOUBLE_TICK_MS": str(TICK_MS), **env})
    request.addfinalizer(proc.stop)
    return proc


# ---------------------------------------------------------------- handshake and errors

def test_handshake_rpc_and_clean_close(double, connect):
    conn, rec = connect(double)
    hello = conn.hello
    assert hello is not None and conn.connected
    assert (hello.protocol, hello.server_version, hello.role) == (4, "double-1", "operator")
    assert hello.scopes == ("operator.admin",) and "health" in hello.methods
    assert (hello.tick_interval, hello.max_payload) == (TICK_MS / 1000, MAX_PAYLOAD)
    assert conn.rpc("health")["ok"] is True
    assert conn.rpc("status")["runtimeVersion"] == "double-1"
    conn.close()
    conn.close()
    assert len(rec.downs) == 1 and rec.downs[0].local and rec.downs[0].code == 1000
    assert not conn.connected
    with pytest.raises(ConnectionLost):
        conn.rpc("health")


def test_token_never_reaches_the_log(double, connect, caplog):
    caplog.set_level(logging.DEBUG)
    conn, _ = connect(double)
    conn.rpc("health")
    with pytest.raises(AuthError):
        GatewayConnection(double.url, double.token + "-wrong", verify_peer=None).connect()
    conn.close()
    assert "connected to gateway double-1" in caplog.text
    assert double.token not in caplog.text


def test_no_granted_scopes_is_explained_in_a_warning(double, caplog):
    conn = GatewayConnection(double.url, double.token, verify_peer=None)
    no_scopes = {"type": "hello-ok", "protocol": 4, "auth": {"role": "operator", "scopes": []}}
    with caplog.at_level(logging.WARNING, logger="clawsvc.gateway.connection"):
        conn._log_hello(parse_hello(no_scopes))
    assert "granted no scopes" in caplog.text and "Origin header" in caplog.text


def test_gateway_error_reply_raises_with_code_and_message(double, connect):
    conn, _ = connect(double)
    with pytest.raises(RpcError) as info:
        conn.rpc("no.such.method", {"a": 1})
    assert (info.value.code, info.value.message) == ("INVALID_REQUEST", "unknown method: no.such.method")
    assert conn.rpc("health")["ok"] is True


def test_wrong_token_is_an_auth_error_without_the_token(double):
    conn = GatewayConnection(double.url, "wrong-token-0123456789", verify_peer=None)
    with pytest.raises(AuthError) as info:
        conn.connect()
    assert "token mismatch" in str(info.value) and info.value.detail_code == "AUTH_TOKEN_MISMATCH"
    assert "wrong-token-0123456789" not in str(info.value) and not conn.connected


def test_startup_window_is_retryable_with_retry_after(tmp_path, request):
    proc = own_double(tmp_path, request, DOUBLE_UNAVAILABLE_FOR="60")
    with pytest.raises(RetryableError) as info:
        GatewayConnection(proc.url, proc.token, verify_peer=None).connect()
    assert info.value.code == "UNAVAILABLE" and info.value.retry_after == 0.5


def test_protocol_mismatch_names_both_versions(tmp_path, request):
    proc = own_double(tmp_path, request, DOUBLE_PROTOCOL="5")
    with pytest.raises(ProtocolMismatchError) as info:
        GatewayConnection(proc.url, proc.token, verify_peer=None).connect()
    assert "gateway speaks protocol 5" in str(info.value) and "clawsvc speaks 3..4" in str(info.value)


def test_refused_port_is_a_transport_error():
    url = f"ws://127.0.0.1:{free_port()}/"
    with pytest.raises(TransportError, match="refused"):
        GatewayConnection(url, "some-token-value", verify_peer=None).connect()


def test_silent_server_is_a_handshake_timeout():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"ws://127.0.0.1:{server.getsockname()[1]}/"
        started = time.monotonic()
        with pytest.raises(TransportError):
            GatewayConnection(url, "some-token-value", verify_peer=None, handshake_timeout=0.5).connect()
        assert time.monotonic() - started < 5


# ---------------------------------------------------------------- verifying the peer before the token

def connects_seen(events: Path) -> list[str]:
    """The connect requests the double received (its DOUBLE_EVENT_FILE)."""
    text = events.read_text() if events.exists() else ""
    return [line for line in text.splitlines() if '"method": "connect"' in line or '"method":"connect"' in line]


def test_verify_peer_sees_this_connections_socket_before_the_token(tmp_path, request):
    events = tmp_path / "requests.jsonl"
    proc = own_double(tmp_path, request, DOUBLE_EVENT_FILE=str(events))
    seen: list[tuple[int, int]] = []

    def verify(sock: socket.socket) -> None:
        seen.append((sock.getpeername()[1], len(connects_seen(events))))

    conn = GatewayConnection(proc.url, proc.token, verify_peer=verify)
    request.addfinalizer(conn.close)
    conn.connect()
    assert seen == [(proc.port, 0)], "verify_peer ran once, on the connection to the double, before connect"
    assert len(connects_seen(events)) == 1


def test_a_refused_peer_never_gets_the_connect_request(tmp_path, request):
    events = tmp_path / "requests.jsonl"
    proc = own_double(tmp_path, request, DOUBLE_EVENT_FILE=str(events))

    def refuse(sock: socket.socket) -> None:
        raise UntrustedPeerError("UNTRUSTED_PEER", "not ours")

    conn = GatewayConnection(proc.url, proc.token, verify_peer=refuse)
    with pytest.raises(UntrustedPeerError):
        conn.connect()
    assert not conn.connected
    # the double answers: a connect would have been recorded
    healthy = GatewayConnection(proc.url, proc.token, verify_peer=None)
    request.addfinalizer(healthy.close)
    healthy.connect()
    assert len(connects_seen(events)) == 1


@pytest.fixture(params=["proc", "lsof"])
def peer_source(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Who names the server end: /proc/net/tcp (Linux) or, where there is none (macOS), lsof, tested here for
    real (its -F output is the same on Linux) by pointing ports.PROC at an empty directory."""
    if request.param == "proc" and not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp")
    if request.param == "lsof":
        if shutil.which("lsof") is None:
            pytest.skip("needs lsof")
        monkeypatch.setattr(ports, "PROC", tmp_path)
    return request.param


def test_peer_check_trusts_the_spawned_tree_and_our_uid_only(double, peer_source):
    """The double is this test's child: trusted as our spawned gateway and, adopted, by uid; refused as the
    gateway of another process tree, and when there is no gateway of our own."""
    for check in (PeerCheck(double.port, False, double.pid), PeerCheck(double.port, True, None)):
        conn = GatewayConnection(double.url, double.token, verify_peer=check)
        conn.connect()
        conn.close()
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            conn = GatewayConnection(double.url, double.token, verify_peer=PeerCheck(double.port, False, other.pid))
            with pytest.raises(UntrustedPeerError) as info:
                conn.connect()
        finally:
            other.kill()
    assert f"held by pid {double.pid} " in str(info.value) and not conn.connected
    assert f"not by the gateway clawsvc started (pid {other.pid})" in str(info.value)
    with pytest.raises(UntrustedPeerError, match="no gateway of its own"):
        GatewayConnection(double.url, double.token, verify_peer=PeerCheck(double.port, False, None)).connect()


def test_a_reaped_spawned_pid_no_longer_vouches_for_whoever_gets_it_next(double, peer_source):
    """Spawned mode trusts a pid only while it is the process it was when the check was built: our gateway
    is reaped and the kernel hands its pid to a stranger (here the double, which holds the server end)."""
    gateway = subprocess.Popen(["sleep", "30"])
    check = PeerCheck(double.port, False, gateway.pid)
    gateway.kill()
    gateway.wait()
    check.spawned = double.pid  # the reuse: the pid the check vouches for now names another process
    conn = GatewayConnection(double.url, double.token, verify_peer=check)
    with pytest.raises(UntrustedPeerError) as info:
        conn.connect()
    assert f"held by pid {double.pid} " in str(info.value) and "is gone" in str(info.value)
    assert not conn.connected


def adopt_probe(double: DoubleProcess, monkeypatch: pytest.MonkeyPatch,
                vanishing: int) -> tuple[Message, int, dict[int, GatewayConnection]]:
    """Run the connector's adoption handshake on the double, the server end vanishing before the first
    `vanishing` peer checks; the message it posts, how many checks ran, and the links it registered."""
    checks: list[int] = []
    verify = PeerCheck.__call__

    def vanish_first(self: PeerCheck, sock: socket.socket) -> None:
        checks.append(1)
        if len(checks) <= vanishing:
            raise PeerGone("CLOSED", f"the server end of the connection to port {double.port} is gone")
        verify(self, sock)

    monkeypatch.setattr(PeerCheck, "__call__", vanish_first)
    config = parse_config(f"gateway:\n  port: {double.port}\n  adopt_existing: true\n"
                          "connection:\n  handshake_timeout: 0.5s\n")
    posted: queue.SimpleQueue[Message] = queue.SimpleQueue()
    links: dict[int, GatewayConnection] = {}
    connector = Connector(posted.put, links.__setitem__)
    connector.wait_ready(config, double.token, 1, 1.0, always, adopting=True, stranger=f"pid {double.pid}")
    return posted.get(timeout=30), len(checks), links


def test_adopting_retries_a_server_end_that_vanished_before_it_was_verified(double, monkeypatch):
    message, checks, links = adopt_probe(double, monkeypatch, vanishing=1)
    assert isinstance(message, HandshakeDone), message
    links[message.link].close()
    assert checks == 2


def test_adopting_a_port_whose_server_end_always_vanishes_says_so(double, monkeypatch):
    """The connector reports it as its own kind (nothing was sent); what that means is the machine's call
    (tests/test_machine_replay.py: test_a_stranger_that_vanishes_before_every_check_exits_1_saying_so)."""
    message, checks, links = adopt_probe(double, monkeypatch, vanishing=10**6)
    assert isinstance(message, HandshakeFailed) and message.kind is HandshakeKind.PEER_GONE, message
    assert checks > 1 and not links


def test_without_proc_net_tcp_or_lsof_no_peer_is_trusted(double, monkeypatch, tmp_path):
    """Nothing can tell who holds the port: the token is not sent."""
    monkeypatch.setattr(ports, "PROC", tmp_path)
    monkeypatch.setattr(ports, "LSOF_PATH", str(tmp_path))
    conn = GatewayConnection(double.url, double.token, verify_peer=PeerCheck(double.port, True, None))
    with pytest.raises(UntrustedPeerError, match="lsof is missing") as info:
        conn.connect()
    assert info.value.code == "PEER_UNVERIFIABLE" and not conn.connected


def test_lsof_output_is_read_per_process_and_names_every_holder():
    output = ("p100\ncsshd\nu0\nf3\nn127.0.0.1:22->127.0.0.1:5000\n"
              "p4321\ncnode\nu65534\nf21\nn[::1]:18789->[::1]:50123\nf22\nn127.0.0.1:18789->127.0.0.1:50123\n"
              "p4322\ncnode\nu0\nf22\nn127.0.0.1:18789->127.0.0.1:50123\n"
              "pnot-a-pid\nn127.0.0.1:1->127.0.0.1:2\n")
    assert ports.parse_lsof(output, "127.0.0.1:18789->127.0.0.1:50123") == [
        ports.PortHolder(4321, "node", 65534), ports.PortHolder(4322, "node", 0)]
    assert ports.parse_lsof(output, "[::1]:18789->[::1]:50123") == [ports.PortHolder(4321, "node", 65534)]
    assert ports.parse_lsof(output, "127.0.0.1:1->127.0.0.1:2") == []
    assert ports.parse_lsof(output, "127.0.0.1:9->127.0.0.1:9") == []


# ---------------------------------------------------------------- rpc

def test_responses_out_of_order_reach_their_callers(double, connect):
    conn, _ = connect(double)
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(conn.rpc, "double.sleep", {"ms": 3000})
        fast = pool.submit(conn.rpc, "double.sleep", {"ms": 10})
        assert fast.result(10) == {"sleptMs": 10}
        assert not slow.done()
        assert slow.result(10) == {"sleptMs": 3000}


def test_many_threads_share_one_connection(double, connect):
    conn, _ = connect(double)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: conn.rpc("double.sleep", {"ms": i * 7 % 50}), range(32)))
    assert results == [{"sleptMs": i * 7 % 50} for i in range(32)]


def test_rpc_timeout_leaves_the_link_up(double, connect):
    conn, _ = connect(double)
    with pytest.raises(RpcTimeout, match=r"double\.sleep"):
        conn.rpc("double.sleep", {"ms": 1500}, timeout=0.2)
    Recorder.wait(lambda: conn.stats.unmatched == 1)
    assert conn.connected and conn.rpc("health")["ok"] is True


def test_oversize_request_is_refused_before_sending(double, connect):
    conn, _ = connect(double)
    with pytest.raises(GatewayError) as info:
        conn.rpc("health", {"pad": "x" * MAX_PAYLOAD})
    assert info.value.code == "PAYLOAD_TOO_LARGE" and str(MAX_PAYLOAD) in str(info.value)
    assert conn.connected and conn.rpc("health")["ok"] is True


def test_link_drop_fails_every_pending_call_at_once(double, connect):
    conn, rec = connect(double)
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(conn.rpc, "double.sleep", {"ms": 20000}) for _ in range(3)]
        Recorder.wait(lambda: len(conn._pending) == 3)
        started = time.monotonic()
        conn.rpc("double.close", {"code": 4001, "reason": "token rotated"})
        for future in pending:
            with pytest.raises(ConnectionLost, match="connection lost: token rotated"):
                future.result(10)
        assert time.monotonic() - started < 5
    assert rec.downs == [LinkDown(4001, "token rotated", False)]


# ---------------------------------------------------------------- events and odd frames

def test_seq_gap_is_counted_and_events_keep_flowing(double, connect):
    conn, rec = connect(double)
    conn.rpc("double.event", {"event": "probe", "payload": {"n": 1}})
    assert conn.stats.seq_gaps == 0
    conn.rpc("double.seqgap", {"skip": 5})
    conn.rpc("double.event", {"event": "probe", "payload": {"n": 2}})
    conn.rpc("double.event", {"event": "probe", "payload": {"n": 3}})
    assert conn.stats.seq_gaps == 1
    assert [event.payload for event in rec.named("probe")] == [{"n": 1}, {"n": 2}, {"n": 3}]


def test_garbage_frames_are_counted_and_the_reader_survives(double, connect, caplog):
    conn, _ = connect(double)
    caplog.set_level(logging.WARNING, logger="clawsvc.gateway.connection")
    for _ in range(4):
        assert conn.rpc("double.garbage") == {"sent": 5}
    assert conn.stats.malformed == 20
    warnings = [r for r in caplog.records if "malformed frame" in r.getMessage()]
    assert len(warnings) == 5  # frames 1, 2, 4, 8 and 16
    assert conn.rpc("health")["ok"] is True


def test_legacy_jsonrpc_frames(double, connect):
    conn, rec = connect(double)
    conn.rpc("double.legacy")
    assert [e.payload for e in rec.named("channel.status")] == [{"channel": "telegram", "status": "connected"}]
    assert rec.named("chat")[0].payload == {"text": "hello from a legacy gateway"}
    assert conn.stats.unmatched == 2 and conn.stats.malformed == 0
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(conn.rpc, "double.sleep", {"ms": 20000})
        Recorder.wait(lambda: len(conn._pending) == 1)
        (request_id,) = list(conn._pending)
        legacy = {"jsonrpc": "2.0", "id": request_id, "result": {"legacy": True}}
        conn.rpc("double.garbage", {"frames": [legacy]})
        assert waiting.result(10) == {"legacy": True}


def test_a_failing_event_callback_does_not_stop_the_reader(double):
    def explode(event: GatewayEvent) -> None:
        raise RuntimeError("callback bug")

    conn = GatewayConnection(double.url, double.token, verify_peer=None, on_event=explode)
    try:
        conn.connect()
        conn.rpc("double.event", {"event": "probe"})
        assert conn.rpc("health")["ok"] is True and conn.stats.events >= 1
    finally:
        conn.close()


# ---------------------------------------------------------------- liveness and shutdown

def test_tick_silence_declares_the_link_dead(double, connect):
    conn, rec = connect(double, tick_grace=2.0, ping_interval=0)
    conn.rpc("double.silence")
    with pytest.raises(ConnectionLost, match="no tick"):
        conn.rpc("health", timeout=30)
    assert len(rec.downs) == 1
    down = rec.downs[0]
    assert down.code is None and not down.local
    assert f"tickIntervalMs={TICK_MS}" in down.reason and not conn.connected


def test_frozen_peer_is_caught_by_the_pong_timeout(double, connect):
    conn, rec = connect(double, tick_grace=1000.0, ping_interval=0.3)
    conn.rpc("double.freeze")
    Recorder.wait(lambda: rec.downs)
    assert rec.downs == [LinkDown(None, "no pong within 0.3s", False)]
    assert conn.stats.pings >= 1


def test_close_against_a_frozen_peer_is_prompt_and_fails_pending_calls(double, connect):
    conn, rec = connect(double, tick_grace=1000.0, ping_interval=1000.0)
    conn.rpc("double.freeze")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(conn.rpc, "health", None, 60)
        Recorder.wait(lambda: conn._pending)
        started = time.monotonic()
        conn.close()
        took = time.monotonic() - started
        with pytest.raises(ConnectionLost, match="closed by clawsvc"):
            pending.result(10)
    assert took < 1.5, f"close() took {took:.2f}s against a frozen peer"
    assert conn._reader is not None and not conn._reader.is_alive()
    assert rec.downs == [LinkDown(1000, "closed by clawsvc", True)]


def test_sigterm_sends_shutdown_then_1012(tmp_path, request, connect):
    proc = own_double(tmp_path, request, DOUBLE_TICK_MS="30000", DOUBLE_RESTART_EXPECTED_MS="1500")
    _conn, rec = connect(proc)
    proc.popen.terminate()
    Recorder.wait(lambda: rec.downs)
    assert rec.downs == [LinkDown(1012, "gateway stopping", False)]
    shutdown = rec.named("shutdown")
    assert [event.payload for event in shutdown] == [{"reason": "gateway stopping", "restartExpectedMs": 1500}]
    assert proc.popen.wait(10) == 0


# ---------------------------------------------------------------- liveness rules (no clock, no sleeping)

def test_liveness_pings_on_schedule_and_waits_for_the_pong():
    live = Liveness(last_frame=100.0, silence_limit=60.0, ping_interval=30.0, pong_timeout=10.0, tick_interval=30.0)
    assert live.ping_due(100.0) and live.pong_due == 110.0
    assert not live.ping_due(105.0)
    assert live.next_deadline() == 110.0
    assert live.check(109.0) is None
    assert live.check(110.5) == "no pong within 10s"
    live.pong_due = None
    assert live.next_deadline() == 130.0 and live.ping_due(130.0)


def test_liveness_declares_tick_silence():
    live = Liveness(last_frame=0.0, silence_limit=60.0, ping_interval=0.0, pong_timeout=0.0, tick_interval=30.0)
    assert not live.ping_due(0.0) and live.next_deadline() == 60.0
    assert live.check(59.0) is None
    assert live.check(61.0) == "no tick for 61.0s (tickIntervalMs=30000)"
