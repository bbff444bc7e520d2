"""`clawsvc run` as a child process, with a fake NOTIFY_SOCKET, its own config, state dir and control socket."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.common import Backend, gateway_processes, realgw
from clawsvc.control import client as control_client
from tests.notify_peer import Datagram, NotifyPeer
from tests.waiting import exit_description

READY_TIMEOUT = 180.0  # the real gateway needs ~7 s idle, much more on a loaded 2-core machine
STOP_TIMEOUT = 30.0
RUNNING_PID = re.compile(r"^running pid=(\d+) ")
CHILD_ENV_DROP = ("DOUBLE_", "OPENCLAW_", "NOTIFY_", "WATCHDOG_", "JOURNAL_STREAM", "LISTEN_")
LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SPAWNED_PID = re.compile(r"^starting pid=(\d+) .*waiting for hello-ok")


def status(datagram: Datagram) -> str:
    return datagram.fields().get("STATUS", "")


def running_pid(datagram: Datagram) -> int | None:
    match = RUNNING_PID.match(status(datagram))
    return int(match.group(1)) if match else None


def spawned_pid(datagram: Datagram) -> int | None:
    match = SPAWNED_PID.match(status(datagram))
    return int(match.group(1)) if match else None


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class ServiceRun:
    """One `clawsvc run`: start(), wait for sd_notify messages, ask its control socket, stop() (leaves nothing)."""

    def __init__(self, backend: Backend, overrides: dict[str, Any] | None = None,
                 gateway_env: dict[str, str] | None = None) -> None:
        self.backend = backend
        self.root = Path(tempfile.mkdtemp(prefix="clawsvc-bench-"))
        self.state_dir = self.root / "state"
        self.socket = self.root / "control.sock"
        self.log_path = self.root / "clawsvc.log"
        self.port = realgw.free_port()
        token_file = self.root / "token"
        token_file.write_text(secrets.token_urlsafe(32) + "\n")
        token_file.chmod(0o600)
        self.token = token_file.read_text().strip()
        config = {
            "gateway": {"command": list(backend.command), "port": self.port, "state_dir": str(self.state_dir),
                        "env": backend.env(self.state_dir, self.port, gateway_env), "stop_timeout": "10s",
                        "start_timeout": f"{READY_TIMEOUT:.0f}s", "adopt_existing": False},
            "auth": {"token_file": str(token_file)},
            "providers": [],
            "control": {"socket": str(self.socket)},
            "logging": {"level": "info"},
        }
        self.config = merge(config, overrides or {})
        self.config_path = self.root / "clawsvc.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.config_path.chmod(0o600)  # whatever the umask: run refuses a config others can write
        self.notify = NotifyPeer(self.root / "notify.sock")
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.popen is not None, "service not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> ServiceRun:
        env = {k: v for k, v in os.environ.items() if not k.startswith(CHILD_ENV_DROP)}
        env["NOTIFY_SOCKET"] = self.notify.address
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.popen = subprocess.Popen([sys.executable, "-m", "clawsvc", "run", "-c", str(self.config_path)],
                                          env=env, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        popen = self.popen
        self.notify.watch(lambda: exit_description(popen, "clawsvc", self.log_tail))
        return self

    def wait_for(self, match: Callable[[Datagram], bool], timeout: float = READY_TIMEOUT,
                 start: int = 0) -> Datagram:
        try:
            return self.notify.wait_for(match, timeout, since=start)
        except AssertionError as exc:
            raise TimeoutError(f"{exc}; clawsvc log:\n{self.log_tail()}") from None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Datagram:
        return self.wait_for(lambda d: d.fields().get("READY") == "1", timeout)

    def wait_running(self, start: int, not_pid: int | None = None, timeout: float = READY_TIMEOUT) -> Datagram:
        """The first `running pid=N` STATUS after index `start` with a pid other than `not_pid`."""
        return self.wait_for(lambda n: running_pid(n) not in (None, not_pid), timeout, start)

    def request(self, cmd: str, timeout: float = 30.0, **fields: Any) -> Any:
        return control_client.request(self.socket, {"cmd": cmd, **fields}, timeout)

    def log_time(self, pattern: str, after: float) -> float | None:
        """Wall-clock time (epoch) of the first clawsvc log line at or after `after` whose text matches `pattern`."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in lines:
            stamp = LOG_STAMP.match(line)
            if stamp and re.search(pattern, line):
                when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if when >= after - 0.001:
                    return when
        return None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.replace(self.token, "<token>").splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM clawsvc and wait; SIGKILL it and any gateway process left over if it does not finish."""
        code = None
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                code = self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        kill_leftovers(self.state_dir)
        self.notify.close()
        shutil.rmtree(self.root, ignore_errors=True)
        return code

    def __enter__(self) -> ServiceRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def kill_leftovers(state_dir: Path, grace: float = 10.0) -> list[int]:
    """Wait for the gateway's processes to go (its helpers exit ~2 s after it); SIGKILL survivors.
    Returns the pids that had to be killed."""
    deadline = time.monotonic() + grace
    pause = threading.Event()
    while (alive := gateway_processes(state_dir)) and time.monotonic() < deadline:
        pause.wait(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive
