"""The real OpenClaw gateway for integration tests: provisioning, quiet offline env, start/stop, a raw client.

Import it as `from realgw import ...` (pytest puts tests/ on sys.path through tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import websocket

from clawsvc.commands.runtime.provision import DEFAULT_VERSION, Installation, ensure_installed
from clawsvc.gateway.proctree import environ_has

QUIET_ENV = {
    "OPENCLAW_SKIP_CHANNELS": "1",
    "OPENCLAW_SKIP_PROVIDERS": "1",
    "OPENCLAW_SKIP_CRON": "1",
    "OPENCLAW_SKIP_GMAIL_WATCHER": "1",
    "OPENCLAW_SKIP_CANVAS_HOST": "1",
    "OPENCLAW_SKIP_BROWSER_CONTROL_SERVER": "1",
    "OPENCLAW_SKIP_STARTUP_MODEL_PREWARM": "1",
    "OPENCLAW_NO_AUTO_UPDATE": "1",
    "OPENCLAW_DISABLE_BONJOUR": "1",
    "OPENCLAW_NO_RESPAWN": "1",
    "OPENCLAW_SUPERVISOR_MODE": "external",
    "OPENCLAW_SERVICE_REPAIR_POLICY": "external",
    "NO_COLOR": "1",
}
READY_TIMEOUT = 120.0  # ~7 s idle; 49 s measured with two other gateways on 2 cores
STOP_TIMEOUT = 20.0
_ids = itertools.count(1)


def cache_dir() -> Path:
    """Where tests provision the gateway: $CLAWSVC_TEST_CACHE, else /var/cache/clawsvc-test as root (visible to
    units run with ProtectHome/PrivateTmp), else ~/.cache/clawsvc-test. Reused across runs, keyed by version."""
    if configured := os.environ.get("CLAWSVC_TEST_CACHE"):
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/cache/clawsvc-test")
    return Path.home() / ".cache" / "clawsvc-test"


def provision(version: str = DEFAULT_VERSION) -> Installation:
    """The real `clawsvc gateway-install` code path into the test cache (a no-op once installed)."""
    return ensure_installed(cache_dir(), version, report=lambda msg: print(f"gateway-install: {msg}", file=sys.stderr))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env(state_dir: Path, port: int) -> dict[str, str]:
    """A complete, quiet, offline environment for a gateway with its own state dir (token not included: add
    OPENCLAW_GATEWAY_TOKEN). Writes state_dir/openclaw.json; HOME, OPENCLAW_HOME and TMPDIR are private dirs."""
    home, tmp = state_dir / "home", state_dir / "tmp"
    for path in (state_dir, home, tmp):
        path.mkdir(parents=True, exist_ok=True)
    config = {"gateway": {"mode": "local", "bind": "loopback", "port": port},
              "logging": {"file": str(state_dir / "gateway.log")}}
    (state_dir / "openclaw.json").write_text(json.dumps(config, indent=2) + "\n")
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        **QUIET_ENV,
        "OPENCLAW_STATE_DIR": str(state_dir),
        "OPENCLAW_CONFIG_PATH": str(state_dir / "openclaw.json"),
        "OPENCLAW_HOME": str(home),
        "HOME": str(home),
        "TMPDIR": str(tmp),
    }


class GatewayError(Exception):
    """An `ok: false` response from the gateway."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        self.code = str(error.get("code", ""))
        self.details = error.get("details") or {}
        self.retryable = bool(error.get("retryable"))
        super().__init__(f"{method}: {self.code} {error.get('message', '')}")


def call(ws: websocket.WebSocket, method: str, params: dict[str, Any] | None = None,
         timeout: float = 30.0) -> Any:
    """One request on a connected socket; returns the response payload (events in between are skipped)."""
    request_id = f"t{next(_ids)}"
    ws.send(json.dumps({"type": "req", "id": request_id, "method": method, "params": params or {}}))
    deadline = time.monotonic() + timeout
    while True:
        ws.settimeout(max(0.1, deadline - time.monotonic()))
        frame = json.loads(ws.recv())
        if frame.get("type") == "res" and frame.get("id") == request_id:
            if not frame.get("ok"):
                raise GatewayError(method, frame.get("error") or {})
            return frame.get("payload")


def connect(url: str, token: str, *, origin: str | None = None, timeout: float = 10.0,
            scopes: tuple[str, ...] = ("operator.admin",)) -> tuple[websocket.WebSocket, dict[str, Any]]:
    """Open a socket and do the protocol-4 handshake as clawsvc does; returns (socket, hello-ok payload).
    With `origin` an Origin header is sent (the gateway then grants no scopes)."""
    header = {"suppress_origin": True} if origin is None else {"origin": origin}
    ws = websocket.create_connection(url, timeout=timeout, **header)
    try:
        challenge = json.loads(ws.recv())
        if challenge.get("event") != "connect.challenge":
            raise websocket.WebSocketException(f"expected connect.challenge, got {challenge!r:.200}")
        params = {"minProtocol": 3, "maxProtocol": 4,
                  "client": {"id": "gateway-client", "displayName": "clawsvc-tests", "version": "0",
                             "platform": "linux", "mode": "backend"},
                  "auth": {"token": token}, "role": "operator", "scopes": list(scopes), "caps": []}
        hello = call(ws, "connect", params, timeout=timeout)
    except BaseException:
        ws.close()
        raise
    return ws, hello


class RealGateway:
    """One real gateway on a free loopback port, own state dir and token, own process group."""

    def __init__(self, installation: Installation, root: Path | None = None) -> None:
        self.installation = installation
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="clawsvc-realgw-")) if root is None else root
        self.state_dir = self.root / "state"
        self.log_path = self.root / "gateway.out"
        self.token = secrets.token_urlsafe(32)
        self.port = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self.hello: dict[str, Any] = {}

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int:
        assert self.popen is not None, "gateway not started"
        return self.popen.pid

    def argv(self) -> list[str]:
        return [*self.installation.command, "gateway", "run", "--port", str(self.port), "--bind", "loopback",
                "--auth", "token", "--allow-unconfigured"]

    def environment(self) -> dict[str, str]:
        """The gateway's whole environment (self.port is chosen already); writes its openclaw.json."""
        return dict(gateway_env(self.state_dir, self.port), OPENCLAW_GATEWAY_TOKEN=self.token)

    def start(self) -> RealGateway:
        self.port = free_port()
        env = self.environment()
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(self.argv(), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """Poll until a real hello-ok (UNAVAILABLE / refused / early close retried every 100 ms)."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"gateway exited ({self.popen and self.popen.returncode}) before ready:\n"
                                   f"{self.log_tail()}")
            try:
                ws, self.hello = connect(self.url, self.token, timeout=10.0)
            except GatewayError as exc:
                if exc.code != "UNAVAILABLE" and not exc.retryable:
                    raise
            except (OSError, websocket.WebSocketException):
                pass
            else:
                ws.close()
                return self.hello
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready after {timeout:.0f}s:\n{self.log_tail()}")
            pause.wait(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no gateway output)"

    def stop(self) -> None:
        """SIGTERM the group, wait, SIGKILL what is left; assert no process of this gateway survives (its spawn
        broker runs in a session of its own, so survivors are found by group and by their OPENCLAW_STATE_DIR)."""
        if self.popen is not None:
            pgid = self.popen.pid
            _signal_group(pgid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                self.popen.wait(STOP_TIMEOUT)
            if not _wait_gone(self.leftovers, 10.0):
                for pid in self.leftovers():
                    _signal_pid(pid, signal.SIGKILL)
            assert _wait_gone(self.leftovers, 10.0), f"gateway processes survive: {self.leftovers()}"
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """Live processes of this gateway: its process group plus anything running with its state dir."""
        if self.popen is None:
            return []
        return sorted(set(group_members(self.popen.pid)) | set(processes_with_env("OPENCLAW_STATE_DIR",
                                                                                   str(self.state_dir))))

    def __enter__(self) -> RealGateway:
        try:
            self.start().wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _live_processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/pid/stat after the command name) of every non-zombie process."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            yield int(stat.parent.name), fields


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (not zombies) whose environment holds name=value, e.g. one gateway's OPENCLAW_STATE_DIR."""
    wanted = f"{name}={value}".encode()
    return [pid for pid, _ in _live_processes() if pid != os.getpid() and environ_has(pid, wanted)]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    return [pid for pid, fields in _live_processes() if int(fields[2]) == pgid]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(alive: Callable[[], list[int]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while alive():
        if time.monotonic() > deadline:
            return False
        pause.wait(0.05)
    return True
