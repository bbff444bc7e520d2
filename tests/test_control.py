"""ControlServer / request over real unix sockets, peer checks across uids, and the status/rpc/restart CLI."""

from __future__ import annotations

import argparse
import contextlib
import grp
import io
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from another_user import needs_another_user
from waiting import poll

from clawsvc import exitcodes
from clawsvc.commands.control import client as commands_client
from clawsvc.commands.control import restart as restart_cli
from clawsvc.commands.control import rpc as rpc_cli
from clawsvc.commands.control import status as status_cli
from clawsvc.control import client as control_client
from clawsvc.control import server as control
from clawsvc.control import wire as control_wire
from clawsvc.control.client import ClientRefusal, request
from clawsvc.control.path import ControlSocketError
from clawsvc.control.server import ControlServer
from clawsvc.control.wire import ControlError, ServiceNotRunning
from clawsvc.service import status
from clawsvc.service.status import State

NOBODY = 65534


class FakeGatewayError(Exception):
    """Shaped like clawsvc.gateway.protocol.GatewayError: code, message, details."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class FakeHandler:
    def __init__(self, state: str = "running") -> None:
        self.snapshot: dict[str, Any] = {
            "state": state, "pid": 4242, "port": 18789, "owned": True, "gatewayVersion": "2026.9.6",
            "uptime": 7380.0, "connectedAt": time.time() - 7380, "error": None, "reconnectAttempts": 0,
            "restarts": 2, "lastExit": "killed by SIGKILL", "servicePid": os.getpid(), "serviceUptime": 90000.0,
            "config": "/etc/clawsvc/clawsvc.yaml"}
        self.calls: list[tuple[Any, ...]] = []
        self.rpc_behaviour: Any = None  # callable(method, params, timeout) -> result

    def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return self.snapshot

    def rpc(self, method: str, params: Any, timeout: float | None) -> Any:
        self.calls.append(("rpc", method, params, timeout))
        if self.rpc_behaviour is not None:
            return self.rpc_behaviour(method, params, timeout)
        return {"method": method, "params": params, "timeout": timeout}

    def restart_gateway(self, mode: str, why: str = "requested") -> dict[str, Any]:
        self.calls.append(("restart-gateway", mode, why))
        return {"restarting": True, "mode": mode}

    def metrics(self) -> str:
        self.calls.append(("metrics",))
        return "# HELP clawsvc_gateway_up up\n# TYPE clawsvc_gateway_up gauge\nclawsvc_gateway_up 1\n"


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
def sock_path(tmp_path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest.fixture
def server(sock_path, handler) -> Iterator[ControlServer]:
    srv = ControlServer(sock_path, handler)
    srv.start()
    yield srv
    srv.close()


def raw_exchange(path: Path, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        s.sendall(payload)
        return json.loads(control_wire.read_line(s, time.monotonic() + 10))


# ---------------------------------------------------------------- round trips

def test_status_round_trip(server, handler, sock_path):
    assert request(sock_path, {"cmd": "status"}, 5) == json.loads(json.dumps(handler.snapshot))


def test_rpc_passes_method_params_and_timeout(server, handler, sock_path):
    result = request(sock_path, {"cmd": "rpc", "method": "health", "params": {"deep": [1, "ü"]}, "timeout": 2}, 5)
    assert result == {"method": "health", "params": {"deep": [1, "ü"]}, "timeout": 2.0}
    assert request(sock_path, {"cmd": "rpc", "method": "health", "params": None, "timeout": None}, 5)["timeout"] is None


def test_restart_gateway(server, handler, sock_path):
    assert request(sock_path, {"cmd": "restart-gateway"}, 5) == {"restarting": True, "mode": "safe"}
    assert request(sock_path, {"cmd": "restart-gateway", "mode": "fresh"}, 5)["mode"] == "fresh"
    assert request(sock_path, {"cmd": "restart-gateway", "mode": "fresh", "why": "upgrade"}, 5)["mode"] == "fresh"
    assert handler.calls == [("restart-gateway", "safe", "requested"), ("restart-gateway", "fresh", "requested"),
                             ("restart-gateway", "fresh", "upgrade")]
    for bad in ("soft", 1, None, ["safe"]):
        with pytest.raises(ControlError) as err:
            request(sock_path, {"cmd": "restart-gateway", "mode": bad}, 5)
        assert err.value.code == "BAD_REQUEST" and "safe, fresh, force" in err.value.message
    for bad in ("memory", "crash", 1, None):
        with pytest.raises(ControlError) as err:
            request(sock_path, {"cmd": "restart-gateway", "mode": "fresh", "why": bad}, 5)
        assert err.value.code == "BAD_REQUEST" and "requested, upgrade" in err.value.message
    assert len(handler.calls) == 3, "a refused request reaches no handler"


def test_metrics_round_trip(server, handler, sock_path):
    assert request(sock_path, {"cmd": "metrics"}, 5) == handler.metrics()
    assert len(handler.calls) == 2


def test_gateway_error_keeps_code_message_details(server, handler, sock_path):
    def fail(method, params, timeout):
        raise FakeGatewayError("INVALID_REQUEST", "unknown method: nope", {"method": "nope"})
    handler.rpc_behaviour = fail
    with pytest.raises(ControlError) as err:
        request(sock_path, {"cmd": "rpc", "method": "nope", "params": None, "timeout": None}, 5)
    assert (err.value.code, err.value.message, err.value.details) == (
        "INVALID_REQUEST", "unknown method: nope", {"method": "nope"})


def test_unexpected_handler_error_is_internal_and_logged(server, handler, sock_path, caplog):
    def boom(method, params, timeout):
        raise RuntimeError("queue exploded")
    handler.rpc_behaviour = boom
    with caplog.at_level(logging.ERROR, logger="clawsvc.control.server"), pytest.raises(ControlError) as err:
        request(sock_path, {"cmd": "rpc", "method": "health", "params": None, "timeout": None}, 5)
    assert err.value.code == "INTERNAL"
    assert "RuntimeError: queue exploded" in err.value.message
    assert any("failed with an unexpected error" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("payload", "needle"), [
    (b"{not json\n", "not valid JSON"),
    (b"[1, 2]\n", "JSON object"),
    (b'{"cmd": "reboot"}\n', "unknown command 'reboot'"),
    (b'{"cmd": "rpc", "params": {}}\n', "method name"),
    (b'{"cmd": "rpc", "method": "health", "timeout": -1}\n', "positive number"),
    (b'{"cmd": "rpc", "method": "health", "timeout": true}\n', "positive number"),
    (b'{"cmd": "rpc", "method": "health", "timeout": 1e999}\n', "up to 3600, got inf"),
    (b'{"cmd": "rpc", "method": "health", "timeout": NaN}\n', "got nan"),
    (b'{"cmd": "rpc", "method": "health", "timeout": 1' + b"0" * 400 + b"}\n", "got a number of about"),
    (b'{"cmd": "rpc", "method": "health", "timeout": 3600.5}\n', "up to 3600"),
    (b"[" * 101 + b"]" * 101 + b"\n", "nested deeper than 100 levels"),
])
def test_bad_requests(server, handler, sock_path, payload, needle):
    reply = raw_exchange(sock_path, payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert needle in reply["error"]["message"]
    assert not [c for c in handler.calls if c[0] == "rpc"]


def test_oversized_request_is_refused_and_server_keeps_serving(server, sock_path):
    reply = raw_exchange(sock_path, b"x" * (control_wire.MAX_REQUEST + 10) + b"\n")
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert "longer than" in reply["error"]["message"]
    assert request(sock_path, {"cmd": "status"}, 5)["state"] == "running"


def test_timeout_at_the_cap_is_accepted(server, sock_path):
    result = request(sock_path, {"cmd": "rpc", "method": "health", "params": None, "timeout": 3600}, 5)
    assert result["timeout"] == 3600.0


@pytest.mark.parametrize(("text", "deep"), [
    (b'{"a": [[1]]}', False),
    (b"[" * 100 + b"]" * 100, False),
    (b"[" * 101 + b"]" * 101, True),
    (b"[" * 101, True),
    (b'["' + b"[" * 500 + b'"]', False),  # brackets in a string are text
    (b'["\\\"' + b"[" * 500 + b'"]', False),  # escaped quotes do not end the string
    (b'["\\\\"' + b"[" * 101, True),  # an escaped backslash does
    (b'"' + b"[" * 500, False),  # an unterminated string runs to the end
    (b'"\\\\"' * 200_000 + b"[" * 101, True),  # many strings
    (b'["' + b'\\"' * 400_000, False),  # many escaped quotes in an unterminated string: still linear
])
def test_nesting_depth_scan(text, deep):
    assert control_wire.too_deep(text) is deep


def test_client_refuses_an_oversized_request_before_connecting(tmp_path):
    message = {"cmd": "rpc", "method": "x", "params": "y" * control_wire.MAX_REQUEST, "timeout": None}
    with pytest.raises(ControlError) as err:
        request(tmp_path / "nowhere.sock", message, 5)
    assert err.value.code == "TOO_LARGE"
    assert f"at most {control_wire.MAX_REQUEST}" in err.value.message


def test_client_gives_up_on_a_full_backlog_in_bounded_time(tmp_path, monkeypatch):
    monkeypatch.setattr(control_client, "CONNECT_WINDOW", 0.3)
    path = tmp_path / "full.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as filler:
        listener.bind(str(path))
        listener.listen(0)
        filler.connect(str(path))
        started = time.monotonic()
        with pytest.raises(ControlError) as err:
            request(path, {"cmd": "status"}, 10)
    assert err.value.code == "BUSY"
    assert 0.3 <= time.monotonic() - started < 3


@contextlib.contextmanager
def every_slot_taken(handler, sock_path) -> Iterator[threading.Event]:
    """MAX_CLIENTS requests held by the handler until the yielded event is set (at the latest on leaving)."""
    release = threading.Event()
    handler.rpc_behaviour = lambda method, params, timeout: release.wait(30)
    message = {"cmd": "rpc", "method": "block", "params": None, "timeout": None}
    with ThreadPoolExecutor(control.MAX_CLIENTS) as pool:
        try:
            blocked = [pool.submit(request, sock_path, message, 60) for _ in range(control.MAX_CLIENTS)]
            poll(lambda: len(handler.calls) == control.MAX_CLIENTS, 20, "every slot taken")
            yield release
        finally:
            release.set()
        assert [f.result(timeout=30) for f in blocked] == [True] * control.MAX_CLIENTS


def test_a_request_beyond_all_slots_is_told_busy(server, handler, sock_path):
    with every_slot_taken(handler, sock_path), pytest.raises(ControlError) as err:
        request(sock_path, {"cmd": "status"}, 5)
    assert err.value.code == "BUSY"
    assert request(sock_path, {"cmd": "status"}, 5)["state"] == "running"


def test_busy_is_asked_again_within_the_connect_window(server, handler, sock_path):
    """BUSY means nothing was done: the client asks again for up to CONNECT_WINDOW, so a slot freed meanwhile
    answers it (the admin's `clawsvc status` during a burst), and the status is asked for once, not twice."""
    with every_slot_taken(handler, sock_path) as release:
        threading.Timer(0.5, release.set).start()
        assert request(sock_path, {"cmd": "status"}, 5)["state"] == "running"
    assert [c for c in handler.calls if c[0] == "status"] == [("status",)]


def test_large_reply_arrives_whole(server, handler, sock_path):
    handler.rpc_behaviour = lambda method, params, timeout: {"blob": "y" * (3 << 20)}
    result = request(sock_path, {"cmd": "rpc", "method": "big", "params": None, "timeout": None}, 10)
    assert len(result["blob"]) == 3 << 20


def test_silent_client_is_timed_out_without_blocking_others(server, sock_path, monkeypatch):
    monkeypatch.setattr(control, "READ_TIMEOUT", 0.5)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(str(sock_path))
        assert request(sock_path, {"cmd": "status"}, 5)["state"] == "running"
        reply = json.loads(control_wire.read_line(silent, time.monotonic() + 10))
    assert reply["error"]["code"] == "BAD_REQUEST"
    assert "no request line" in reply["error"]["message"]


def test_twenty_concurrent_rpc_callers_all_get_their_own_answer(server, handler, sock_path):
    callers = 20
    barrier = threading.Barrier(callers, timeout=30)

    def slow_echo(method, params, timeout):
        barrier.wait()  # only passes when all 20 are inside the handler at once
        return {"echo": params}

    handler.rpc_behaviour = slow_echo
    with ThreadPoolExecutor(callers) as pool:
        futures = [pool.submit(request, sock_path, {"cmd": "rpc", "method": "health", "params": {"n": n},
                                                    "timeout": None}, 60) for n in range(callers)]
        results = [f.result(timeout=90) for f in futures]
    assert results == [{"echo": {"n": n}} for n in range(callers)]


# ---------------------------------------------------------------- socket file lifecycle and permissions

def test_socket_and_created_directory_are_owner_only(server, sock_path):
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(sock_path.stat().st_mode)


def test_existing_directory_is_left_alone(tmp_path, handler):
    tmp_path.chmod(0o755)
    srv = ControlServer(tmp_path / "c.sock", handler)
    srv.start()
    try:
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    finally:
        srv.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to an arbitrary group needs root")
def test_group_access_modes(sock_path, handler):
    srv = ControlServer(sock_path, handler, group="users")
    srv.start()
    try:
        gid = grp.getgrnam("users").gr_gid
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
        assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o750
        assert sock_path.stat().st_gid == gid and sock_path.parent.stat().st_gid == gid
    finally:
        srv.close()


def test_unknown_group_is_a_clear_error(sock_path, handler):
    with pytest.raises(ControlSocketError, match="no group named 'no-such-group-xyz'"):
        ControlServer(sock_path, handler, group="no-such-group-xyz").start()


def test_close_removes_the_socket(sock_path, handler):
    srv = ControlServer(sock_path, handler)
    srv.start()
    srv.close()
    assert not sock_path.exists()
    with pytest.raises(ServiceNotRunning, match="no control socket"):
        request(sock_path, {"cmd": "status"}, 5)
    srv.close()  # idempotent


def test_close_leaves_a_socket_that_is_no_longer_ours(sock_path, handler):
    srv = ControlServer(sock_path, handler)
    srv.start()
    sock_path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(sock_path))
        srv.close()
        assert sock_path.exists()


def test_stale_socket_is_replaced(sock_path, handler):
    sock_path.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(sock_path))  # a socket file nobody listens on, as after a SIGKILL
    with pytest.raises(ServiceNotRunning, match="stale socket"):
        request(sock_path, {"cmd": "status"}, 5)
    srv = ControlServer(sock_path, handler)
    srv.start()
    try:
        assert request(sock_path, {"cmd": "status"}, 5)["state"] == "running"
    finally:
        srv.close()


def test_live_socket_is_never_stolen(server, sock_path):
    second = ControlServer(sock_path, FakeHandler(state="stopped"))
    with pytest.raises(ControlSocketError, match=rf"another clawsvc is serving .*control.sock \(pid {os.getpid()}\)"):
        second.start()
    assert request(sock_path, {"cmd": "status"}, 5)["state"] == "running"


def test_a_file_that_is_not_a_socket_is_not_deleted(sock_path, handler):
    sock_path.parent.mkdir()
    sock_path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        ControlServer(sock_path, handler).start()
    assert sock_path.read_text() == "precious"


def test_the_socket_is_born_with_its_mode_and_the_umask_is_restored(sock_path, handler, monkeypatch):
    def no_chmod(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("chmod by path follows a symlink swapped in after bind()")
    monkeypatch.setattr(os, "chmod", no_chmod)
    previous = os.umask(0o022)
    try:
        srv = ControlServer(sock_path, handler)
        srv.start()
        try:
            assert stat.S_IMODE(sock_path.lstat().st_mode) == 0o600
            assert stat.S_IMODE(sock_path.parent.lstat().st_mode) == 0o700
        finally:
            srv.close()
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(previous)


def test_a_request_whose_thread_cannot_start_gives_its_slot_back(server, sock_path, monkeypatch):
    real_start = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        if thread.name == "clawsvc-control-client":
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    monkeypatch.setattr(control_client, "CONNECT_WINDOW", 0.1)  # each BUSY asked again for 0.1 s, not 3 s
    codes = []
    for _ in range(control.MAX_CLIENTS + 1):
        with pytest.raises(ControlError) as err:
            request(sock_path, {"cmd": "status"}, 5)
        codes.append(err.value.code)
    monkeypatch.undo()
    assert codes == ["BUSY"] * (control.MAX_CLIENTS + 1)
    assert request(sock_path, {"cmd": "status"}, 5)["state"] == "running"


# ---------------------------------------------------------------- other users

CLIENT = """
import json, sys
from pathlib import Path
from clawsvc.control.client import request
from clawsvc.control.wire import ControlError
try:
    print(json.dumps({"result": request(Path(sys.argv[1]), {"cmd": "status"}, 10)}))
except ControlError as exc:
    print(json.dumps({"code": exc.code, "message": exc.message}))
"""



def as_nobody(path: Path, groups: str | None = None, gid: int = NOBODY) -> dict[str, Any]:
    group_args = [f"--groups={groups}"] if groups else ["--clear-groups"]
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={gid}", *group_args, sys.executable, "-c", CLIENT, str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="clawsvc-ctl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def planted(path: Path, mode: int, uid: int) -> Path:
    path.mkdir(mode=mode)
    path.chmod(mode)  # past the umask
    os.chown(path, uid, uid)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to another uid")
@pytest.mark.parametrize(("planted_dir", "mode", "uid", "socket_below", "needles"), [
    ("run", 0o755, NOBODY, "control.sock", ["is owned by", f"(uid {NOBODY})"]),
    ("clawsvc-1000", 0o755, NOBODY, "clawsvc/control.sock", ["on its path is owned by", f"(uid {NOBODY})"]),
    ("run", 0o777, 0, "control.sock", ["writable by group/others"]),
])
def test_a_planted_socket_directory_is_refused(public_dir, handler, planted_dir, mode, uid, socket_below, needles):
    directory = planted(public_dir / planted_dir, mode, uid)
    path = directory / socket_below
    with pytest.raises(ControlSocketError) as err:
        ControlServer(path, handler).start()
    assert all(needle in str(err.value) for needle in needles), err.value
    assert f"directory {directory}" in str(err.value)
    assert "\n" not in str(err.value)
    assert list(directory.iterdir()) == []
    assert stat.S_IMODE(directory.stat().st_mode) == mode


SERVE_ONCE = """
import socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
print("listening", flush=True)
listener.settimeout(60)
conn, _ = listener.accept()
conn.settimeout(60)
received = 0
while chunk := conn.recv(65536):
    received += len(chunk)
print(received, flush=True)
"""


@pytest.fixture
def nobody_server(public_dir) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A unix socket served by uid 65534 in a directory it owns; it prints how many bytes it was sent."""
    path = planted(public_dir / "nobody", 0o755, NOBODY) / "control.sock"
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c",
            SERVE_ONCE, str(path)]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                             start_new_session=True)
    try:
        assert popen.stdout is not None and popen.stdout.readline() == "listening\n", popen.stderr
        yield path, popen
    finally:
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGKILL)
        popen.communicate()


def bytes_received(popen: subprocess.Popen[str]) -> int:
    out, err = popen.communicate(timeout=30)
    assert popen.returncode == 0, err
    return int(out)


@needs_another_user
def test_the_client_refuses_a_socket_served_by_another_uid_and_sends_nothing(nobody_server):
    path, server = nobody_server
    with pytest.raises(ClientRefusal) as err:
        request(path, {"cmd": "rpc", "method": "secret", "params": {"a": 1}, "timeout": None}, 5)
    assert err.value.code == "UNTRUSTED"
    assert err.value.message == (f"{path} is served by user nobody (uid {NOBODY}), not by clawsvc's user; "
                                 "refusing to send the request")
    assert bytes_received(server) == 0


TRUSTED_AS_NOBODY = """
import json, sys
from pathlib import Path
from clawsvc.control import client as control_client
control_client.service_uid = lambda: 4242
print(json.dumps([sorted(control_client.trusted_server_uids(Path(p))) for p in sys.argv[1:]]))
"""


@needs_another_user
def test_the_service_user_is_trusted_by_root_and_below_run_clawsvc_only(monkeypatch):
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c",
            TRUSTED_AS_NOBODY, "/run/clawsvc/control.sock", "/run/clawsvc/x/control.sock",
            f"/tmp/clawsvc-{NOBODY}/clawsvc/control.sock", "/run/clawsvc/../elsewhere/control.sock"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    below, deeper, tmp, escaped = json.loads(done.stdout)
    assert below == deeper == [0, 4242, NOBODY]
    assert tmp == escaped == [0, NOBODY]
    monkeypatch.setattr(control_client, "service_uid", lambda: 4242)
    assert control_client.trusted_server_uids(Path("/tmp/x.sock")) == {0, 4242}


def test_a_huge_reply_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(control_client, "MAX_REPLY", 1 << 20)
    path = tmp_path / "chatty.sock"
    sent = [0]

    def flood(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn, contextlib.suppress(OSError):
            while sent[0] < 256 << 20:  # a bound for the test itself, far above what the client may take
                sent[0] += conn.send(b"x" * 65536)

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        server = threading.Thread(target=flood, args=(listener,), daemon=True)
        server.start()
        with pytest.raises(ClientRefusal) as err:
            request(path, {"cmd": "status"}, 10)
        server.join(10)
    assert not server.is_alive()
    assert err.value.code == "TOO_LARGE"
    assert "more than 1 MiB" in err.value.message
    assert sent[0] < 16 << 20


@needs_another_user
def test_another_uid_is_refused_by_the_peer_check(public_dir, handler):
    path = public_dir / "control.sock"
    srv = ControlServer(path, handler)
    srv.start()
    try:
        path.chmod(0o666)  # take the file mode out of the way: SO_PEERCRED alone must refuse
        reply = as_nobody(path)
    finally:
        srv.close()
    assert reply["code"] == "EACCES"
    assert reply["message"].startswith(f"uid {NOBODY} is not allowed to control clawsvc")
    assert handler.calls == []


@needs_another_user
def test_another_uid_cannot_even_open_the_default_socket(public_dir, handler):
    path = public_dir / "run" / "control.sock"
    srv = ControlServer(path, handler)
    srv.start()
    try:
        reply = as_nobody(path)
    finally:
        srv.close()
    assert reply["code"] == "EACCES"
    assert "permission denied opening" in reply["message"]


@needs_another_user
def test_member_of_the_control_group_is_allowed(public_dir, handler):
    path = public_dir / "run" / "control.sock"
    srv = ControlServer(path, handler, group="users")
    srv.start()
    try:
        users = grp.getgrnam("users").gr_gid
        member = as_nobody(path, groups=str(users))
        primary = as_nobody(path, gid=users)
        path.parent.chmod(0o755)
        path.chmod(0o666)  # the outsider reaches the server: the peer check must refuse it
        outsider = as_nobody(path)
    finally:
        srv.close()
    assert member["result"]["state"] == "running"
    assert primary["result"]["state"] == "running"
    assert outsider["code"] == "EACCES"
    assert outsider["message"] == (f"uid {NOBODY} is not allowed to control clawsvc "
                                   f"(allowed: root, uid 0 and group users; see control.group)")


HOLD_SLOTS = """
import json, socket, sys
socks = []
for _ in range(int(sys.argv[2])):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    sock.sendall(b'{"cmd": "rpc", "method": "block", "params": null, "timeout": null}\\n')
    socks.append(sock)
print("sent", flush=True)
answers = []
for sock in socks:
    sock.settimeout(60)
    data = b""
    while not data.endswith(b"\\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    answers.append(json.loads(data)["ok"] if data else None)
print(json.dumps(answers), flush=True)
"""


@needs_another_user
def test_slots_are_kept_for_root_when_the_group_has_taken_its_share(public_dir, handler):
    path = public_dir / "run" / "control.sock"
    srv = ControlServer(path, handler, group="users")
    srv.start()
    release = threading.Event()
    handler.rpc_behaviour = lambda method, params, timeout: release.wait(30)
    share = control.MAX_CLIENTS - control.RESERVED
    users = grp.getgrnam("users").gr_gid
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={users}", sys.executable, "-c",
            HOLD_SLOTS, str(path), str(share)]
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                              start_new_session=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "sent\n"
        poll(lambda: len(handler.calls) == share, 20, "the group's share of slots taken by group members")
        member = as_nobody(path, groups=str(users))
        root = request(path, {"cmd": "status"}, 5)
        release.set()
        out, err = holder.communicate(timeout=60)
    finally:
        release.set()
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.communicate()
        srv.close()
    assert holder.returncode == 0, err
    assert json.loads(out) == [True] * share
    assert member["code"] == "BUSY"
    assert root["state"] == "running"
    assert [call[0] for call in handler.calls] == ["rpc"] * share + ["status"]


# ---------------------------------------------------------------- CLI

@pytest.fixture
def config_file(tmp_path, sock_path) -> Path:
    path = tmp_path / "clawsvc.yaml"
    path.write_text(f"control:\n  socket: {sock_path}\ngateway:\n  start_timeout: 5s\n")
    return path


def ns(config: Path, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(config=str(config), **kw)


def test_status_human_view(server, config_file, capsys):
    assert status_cli.status_main(ns(config_file, json=False)) == exitcodes.OK
    out = capsys.readouterr().out
    assert "clawsvc - OpenClaw gateway service: running" in out
    assert "State: running since" in out and "2h 3min ago" in out
    assert "pid 4242, port 18789, openclaw 2026.9.6, started by clawsvc" in out
    assert "Restarts: 2, reconnect attempts: 0" in out
    assert "Last exit: killed by SIGKILL" in out
    assert "up 1d 1h" in out


def test_status_json(server, handler, config_file, capsys):
    assert status_cli.status_main(ns(config_file, json=True)) == exitcodes.OK
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(handler.snapshot))


def test_status_not_running_state_exits_3(server, handler, config_file, capsys):
    handler.snapshot.update(state="reconnecting", uptime=None, connectedAt=None, pid=None, reconnectAttempts=4,
                            error="gateway closed the connection (1012 service restart)", cause="link lost")
    assert status_cli.status_main(ns(config_file, json=False)) == exitcodes.NOT_RUNNING
    out = capsys.readouterr().out
    assert "State: reconnecting (attempt 4)" in out
    assert "Error: gateway closed the connection" in out
    assert "Cause: link lost" in out
    assert "Gateway: no process, port 18789" in out


def test_status_without_service_exits_3(config_file, capsys):
    assert status_cli.status_main(ns(config_file, json=False)) == exitcodes.NOT_RUNNING
    assert "not running (no control socket at" in capsys.readouterr().err


def test_a_misspelt_socket_key_is_named_and_the_default_socket_asked(tmp_path, capsys, monkeypatch):
    """A config whose socket cannot be read no longer ends the CLI with 78: it says why in one line and asks
    the default socket (issue 20: status must answer after an edit with a typo)."""
    default = tmp_path / "default" / "control.sock"
    monkeypatch.setattr(commands_client, "default_control_socket", lambda: default)
    bad = tmp_path / "bad.yaml"
    bad.write_text("control:\n  sockett: /x\n")
    assert status_cli.status_main(ns(bad, json=False)) == exitcodes.NOT_RUNNING
    assert rpc_cli.rpc_main(ns(bad, method="health", params=None, timeout=None)) == exitcodes.NOT_RUNNING
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"clawsvc: {bad}:2: control.sockett: unknown key (did you mean control.socket?); trying the "
                      f"default control socket {default}")
    assert f"not running (no control socket at {default})" in err[1]


def test_a_named_config_that_does_not_exist_exits_78(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    assert status_cli.status_main(ns(missing, json=False)) == exitcodes.CONFIG
    assert capsys.readouterr().err == f"clawsvc: {missing}: config file not found\n"


def test_rpc_prints_payload(server, handler, config_file, capsys):
    code = rpc_cli.rpc_main(ns(config_file, method="health", params='{"probe": true}', timeout=3.0))
    assert code == exitcodes.OK
    out = capsys.readouterr().out
    assert json.loads(out) == {"method": "health", "params": {"probe": True}, "timeout": 3.0}
    assert out.startswith('{\n  "method"')


def test_rpc_gateway_error_exits_1(server, handler, config_file, capsys):
    def fail(method, params, timeout):
        raise FakeGatewayError("UNAVAILABLE", "gateway starting", {"retryAfterMs": 500})
    handler.rpc_behaviour = fail
    assert rpc_cli.rpc_main(ns(config_file, method="health", params=None, timeout=None)) == exitcodes.FAIL
    err = capsys.readouterr().err
    assert err.startswith("clawsvc: UNAVAILABLE: gateway starting\n")
    assert '"retryAfterMs": 500' in err


def test_rpc_usage_errors(config_file, capsys):
    assert rpc_cli.rpc_main(ns(config_file, method="x", params="{oops", timeout=None)) == exitcodes.USAGE
    assert rpc_cli.rpc_main(ns(config_file, method="x", params=None, timeout=0.0)) == exitcodes.USAGE
    assert "PARAMS_JSON is not valid JSON" in capsys.readouterr().err


def test_rpc_params_from_a_file_and_from_stdin(server, handler, config_file, tmp_path, capsys, monkeypatch):
    params = tmp_path / "params.json"
    params.write_text('{"from": "file"}')
    assert rpc_cli.rpc_main(ns(config_file, method="m", params=f"@{params}", timeout=None)) == exitcodes.OK
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'["from", "stdin"]')))
    assert rpc_cli.rpc_main(ns(config_file, method="m", params="-", timeout=None)) == exitcodes.OK
    assert [call[2] for call in handler.calls] == [{"from": "file"}, ["from", "stdin"]]


def big_file(directory: Path) -> Path:
    path = directory / "big.json"
    path.write_bytes(b" " * (control_wire.MAX_REQUEST + 1))
    return path


@pytest.mark.parametrize(("make", "needle"), [
    (lambda d: "@", "@FILE needs a file name"),
    (lambda d: f"@{d / 'missing.json'}", "cannot read params file"),
    (lambda d: f"@{d}", "Is a directory"),
    (lambda d: "@/dev/zero", "params file /dev/zero is a character device, not a regular file"),
    (lambda d: f"@{big_file(d)}", f"larger than {control_wire.MAX_REQUEST} bytes"),
    (lambda d: "[" * 5000, "nests deeper than 100 levels"),
    (lambda d: "1e", "PARAMS_JSON is not valid JSON"),
])
def test_rpc_params_problems_are_one_line_usage_errors(config_file, tmp_path, capsys, make, needle):
    assert rpc_cli.rpc_main(ns(config_file, method="x", params=make(tmp_path), timeout=None)) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1.0, 3601.0])
def test_rpc_timeout_out_of_range_is_a_usage_error(config_file, capsys, timeout):
    assert rpc_cli.rpc_main(ns(config_file, method="x", params=None, timeout=timeout)) == exitcodes.USAGE
    assert "--timeout must be a positive number of seconds up to 3600" in capsys.readouterr().err


def test_rpc_and_restart_without_service_exit_3(config_file):
    assert rpc_cli.rpc_main(ns(config_file, method="health", params=None, timeout=None)) == 3
    assert restart_cli.restart_main(ns(config_file, force=False)) == 3


def test_restart_gateway_cli(server, handler, config_file, capsys):
    assert restart_cli.restart_main(ns(config_file, force=False)) == exitcodes.OK
    assert "restarts itself (same process) as soon as its active work is done" in capsys.readouterr().out
    assert restart_cli.restart_main(ns(config_file, force=True)) == exitcodes.OK
    assert "work in flight is cut off" in capsys.readouterr().out
    assert handler.calls == [("restart-gateway", "safe", "requested"), ("restart-gateway", "force", "requested")]


def test_cli_subprocess_end_to_end(server, config_file):
    run = [sys.executable, "-m", "clawsvc"]
    done = subprocess.run([*run, "status", "-c", str(config_file)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "port 18789" in done.stdout
    done = subprocess.run([*run, "rpc", "status", "[1]", "-c", str(config_file)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["params"] == [1]


def reply(**changes: Any) -> dict[str, Any]:
    """A status reply as the service sends it, with `changes`; a change to None leaves the key out."""
    base = {"state": "running", "pid": 4242, "port": 18789, "owned": True, "gatewayVersion": "2026.9.6",
            "uptime": 7380.0, "connectedAt": 1_700_000_000.0, "error": None, "cause": None, "reconnectAttempts": 0,
            "restarts": 2, "lastExit": "killed by SIGKILL", "servicePid": 77, "serviceUptime": 90000.0,
            "config": "/etc/clawsvc/clawsvc.yaml", "ready": False, "failing": ["channel:telegram"]}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


@pytest.fixture
def utc() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_status_block_renders_the_typed_snapshot(utc):
    snap = status.Snapshot.from_dict(reply())
    assert snap.state is State.RUNNING
    text = status.status_block(snap, "/run/clawsvc/control.sock", status.REPLIED, 1_700_000_000.0 + 7380)
    assert text.splitlines()[1:] == [
        "     State: running since Tue 2023-11-14 22:13:20 UTC; 2h 3min ago",
        "   Gateway: pid 4242, port 18789, openclaw 2026.9.6, started by clawsvc",
        "  Restarts: 2, reconnect attempts: 0",
        " Readiness: not ready: failing channel:telegram",
        " Last exit: killed by SIGKILL",
        "   Service: pid 77, up 1d 1h",
        "    Config: /etc/clawsvc/clawsvc.yaml",
        "   Control: /run/clawsvc/control.sock"]
    assert text.splitlines()[0].endswith(" clawsvc - OpenClaw gateway service: running")


def test_render_adopted_gateway_and_missing_fields():
    snap = status.Snapshot.from_dict({"state": "running", "pid": 77, "port": 18790, "owned": False, "uptime": 30.0,
                                      "connectedAt": None, "reconnectAttempts": 0, "restarts": 0, "servicePid": 9,
                                      "serviceUptime": 5.0})
    text = status.status_block(snap, "/run/x.sock", status.REPLIED, wall_now=0)
    assert "State: running (gateway up 30s)" in text
    assert "pid 77, port 18790, adopted (clawsvc will not stop it)" in text
    assert "Last exit" not in text and "Error" not in text
    assert "Config: built-in defaults" in text
    assert "Service: pid 9, up 5s" in text


@pytest.mark.parametrize("state", list(State))
def test_a_reply_reads_back_as_the_snapshot_it_came_from(state):
    sent = status.Snapshot(state, 4242, 18789, False, "2026.9.6", 1000.25, 1_700_000_000.5, "boom", "link lost",
                           3, 1, "exit 1", 77, 12.5, None, 0)
    now = 4321.75
    wire = json.loads(json.dumps(sent.to_dict(now)))
    read = status.Snapshot.from_dict(wire)
    assert read.state is state
    assert read.to_dict(status.REPLIED) == wire
    assert status.status_line(read, status.REPLIED) == status.status_line(sent, now)


@pytest.mark.parametrize(("data", "named"), [
    (["running"], "not an object"),
    (reply(state="exploded"), '"state"'),
    ({key: value for key, value in reply().items() if key != "state"}, '"state"'),
    (reply(port="18789"), '"port"'),
    (reply(port=True), '"port"'),
    (reply(port=70000), '"port"'),
    (reply(pid=-1), '"pid"'),
    (reply(owned="yes"), '"owned"'),
    (reply(uptime=float("nan")), '"uptime"'),
    (reply(uptime=-1), '"uptime"'),
    (reply(connectedAt=1e300), '"connectedAt"'),
    (reply(restarts=1.5), '"restarts"'),
    (reply(serviceUptime=float("inf")), '"serviceUptime"'),
    (reply(serviceUptime=10 ** 400), '"serviceUptime"'),
    (reply(connectedAt=-(10 ** 400)), '"connectedAt"'),
    ({key: value for key, value in reply().items() if key != "servicePid"}, '"servicePid"'),
    (reply(error=["x" * 10_000]), '"error"'),
    (reply(ready="yes"), '"ready"'),
    (reply(failing="channel"), '"failing"'),
    (reply(failing=[1]), '"failing"'),
    (reply(failing=["x"] * 51), '"failing"'),
])
def test_a_status_reply_that_is_no_snapshot_is_refused_in_one_line(data, named):
    with pytest.raises(status.BadSnapshot) as caught:
        status.Snapshot.from_dict(data)
    message = str(caught.value)
    assert named in message and "\n" not in message and len(message) < 200, message


@pytest.mark.parametrize("as_json", [False, True])
def test_status_cli_refuses_a_garbage_reply(server, handler, config_file, capsys, as_json):
    handler.snapshot["state"] = "on fire\nnext line"
    assert status_cli.status_main(ns(config_file, json=as_json)) == exitcodes.FAIL
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and '"state"' in err and "cannot use" in err, err
