"""Helpers for the fault matrix: `clawsvc run` on the gateway double with short timeouts, CLI callers as real
processes, and the checks every case ends with (nothing lost: callers resolved, no orphan, state right)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from double import double_command, free_port, pid_alive
from service_proc import ServiceProcess, base_config, merge, poll

FAST: dict[str, Any] = {
    "gateway": {"stop_timeout": 1.0, "start_timeout": 10.0},
    "connection": {"handshake_timeout": 0.5, "request_timeout": 3.0},
    "health": {"interval": 0.5, "timeout": 0.5, "failures": 2, "tick_grace": 3.0},
    "reconnect": {"base_delay": 0.05, "max_delay": 0.2, "max_attempts": 5, "stable_after": 60.0},
}
STARTED = r"started gateway pid (\d+) on port"
HUNG = 60.0  # far beyond any answer these tests expect: reaching it means something hangs


@dataclass
class Services:
    """Every clawsvc a test starts; closed (SIGTERM, then SIGKILL, gateways reaped) in teardown."""

    root: Path
    started: list[ServiceProcess] = field(default_factory=list)

    def start(self, double_env: dict[str, str] | None = None, extra: dict[str, Any] | None = None,
              env: dict[str, str] | None = None, root: Path | None = None,
              events: bool = False) -> ServiceProcess:
        """clawsvc on the double (tick 300 ms); `events` makes the double log every request it receives."""
        root = root or self.root
        gateway_env = {"DOUBLE_TICK_MS": "300", **(double_env or {})}
        if events:
            gateway_env["DOUBLE_EVENT_FILE"] = str(root / "requests.jsonl")
        config = merge(base_config(root, double_command(), free_port()), FAST)
        config = merge(config, {"gateway": {"env": gateway_env}})
        config = merge(config, extra or {})
        svc = ServiceProcess.start(root, config, env=env)
        self.started.append(svc)
        return svc

    def close(self) -> None:
        for svc in self.started:
            svc.close()


@dataclass
class Callers:
    """`clawsvc` CLI invocations running in the background; any still running in teardown is killed."""

    started: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self, svc: ServiceProcess, *args: str, user: int | None = None) -> subprocess.Popen[str]:
        popen = subprocess.Popen(cli_argv(svc, *args, user=user), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.started.append(popen)
        return popen

    def close(self) -> None:
        for popen in self.started:
            if popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()


def cli_argv(svc: ServiceProcess, *args: str, user: int | None = None) -> list[str]:
    argv = [sys.executable, "-m", "clawsvc", args[0], "-c", str(svc.config_path), *args[1:]]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *argv]
    return argv


def cli(svc: ServiceProcess, *args: str, user: int | None = None,
        timeout: float = HUNG) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv(svc, *args, user=user), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def finish(popen: subprocess.Popen[str], timeout: float = HUNG) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a background caller; AssertionError if it is still waiting at `timeout`."""
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"caller {popen.args!r} still waiting after {timeout}s") from None
    return popen.returncode, out, err


def spawned(svc: ServiceProcess) -> list[int]:
    return [int(pid) for pid in re.findall(STARTED, svc.log())]


def requests_seen(svc: ServiceProcess, method: str) -> list[dict[str, Any]]:
    """Requests the double received (DOUBLE_EVENT_FILE, see Services.start(events=True)), oldest first."""
    path = svc.root / "requests.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["method"] == method]


def ready(svc: ServiceProcess, timeout: float = 20.0) -> dict[str, Any]:
    """Wait for READY=1 and return the status, which must say running with a live gateway pid."""
    svc.peer.wait_for("^READY=1", timeout)
    status = svc.status()
    assert status["state"] == "running" and status["pid"] and pid_alive(status["pid"]), status
    return status


def running_other_than(svc: ServiceProcess, pid: int, timeout: float = 20.0) -> dict[str, Any]:
    return svc.wait_state(lambda s: s["state"] == "running" and s["pid"] not in (None, pid), timeout,
                          f"state running with a gateway other than pid {pid}")


def last_status(svc: ServiceProcess) -> str:
    """The STATUS= systemd shows now: the last one sent."""
    found = svc.peer.find(r"^STATUS=")
    assert found, "no STATUS= datagram at all"
    return found[-1].fields()["STATUS"]


def health_ok(svc: ServiceProcess) -> None:
    result = cli(svc, "rpc", "health")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"] is True


def stops_clean(svc: ServiceProcess) -> None:
    """SIGTERM: exit 0, no gateway process left behind, control socket removed."""
    assert svc.terminate() == 0, svc.log()[-3000:]
    assert svc.leftovers() == []
    assert not svc.control_socket.exists()


def gone(pids: list[int], timeout: float = 10.0) -> None:
    poll(lambda: not any(pid_alive(pid) for pid in pids), timeout, f"processes {pids} to be gone")


def error_lines(svc: ServiceProcess, needle: str) -> list[str]:
    return [line for line in svc.log().splitlines() if needle in line and "ERROR" in line]


def write_config(root: Path, extra: dict[str, Any]) -> Path:
    """root/clawsvc.yaml: a config for the double (FAST timings) merged with `extra`, for a clawsvc not started
    yet (cases that refuse at start, or change the file before it)."""
    import yaml  # only here: faultkit's header is shared, this one function came later

    path = root / "clawsvc.yaml"
    path.write_text(yaml.safe_dump(merge(merge(base_config(root, double_command(), free_port()), FAST), extra),
                                   sort_keys=False))
    return path
