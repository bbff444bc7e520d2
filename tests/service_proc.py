"""`clawsvc run` as a real child process for tests: config file, fake systemd, captured log, control socket.

    svc = ServiceProcess.start(tmp_path, {"gateway": {...}}, env={"WATCHDOG_USEC": "1000000"})
    svc.peer.wait_for("^READY=1", 30)
    svc.status()["pid"]
    svc.terminate()   # SIGTERM, wait; returns the exit code

Teardown (`close`) SIGKILLs clawsvc if it is still there and kills whatever still runs with its gateway's
OPENCLAW_STATE_DIR, so a failing test leaves nothing behind; `leftovers()` lets a test assert on that first.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from notify_peer import NotifyPeer
from realgw import processes_with_env
from waiting import exit_description, poll, terminate

from clawsvc.control import client as control_client
from clawsvc.control import wire as control_wire

STRIPPED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_PID", "LISTEN_FDS",
            "CLAWSVC_CONFIG", "CREDENTIALS_DIRECTORY")


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def base_config(root: Path, command: tuple[str, ...], port: int) -> dict[str, Any]:
    """A config with everything private to `root`; the token lives in root/token (0600)."""
    root.mkdir(parents=True, exist_ok=True)
    token_file = root / "token"
    if not token_file.exists():
        token_file.write_text(secrets.token_urlsafe(32) + "\n")
        token_file.chmod(0o600)
    return {
        "gateway": {"command": list(command), "port": port, "state_dir": str(root / "state"),
                    "compile_cache": str(root / "compile-cache"), "stop_timeout": "3s", "start_timeout": "60s",
                    "adopt_existing": True},
        "auth": {"token_file": str(token_file)},
        "providers": [],
        "control": {"socket": str(root / "ctl" / "control.sock")},
        "logging": {"level": "debug"},
    }


@dataclass
class ServiceProcess:
    popen: subprocess.Popen[bytes]
    root: Path
    config_path: Path
    config: dict[str, Any]
    peer: NotifyPeer
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)

    @classmethod
    def start(cls, root: Path, config: dict[str, Any], env: dict[str, str] | None = None,
              notify_name: str = "notify.sock") -> ServiceProcess:
        root.mkdir(parents=True, exist_ok=True)
        config_path = root / "clawsvc.yaml"
        text = yaml.safe_dump(config, sort_keys=False)
        if not config_path.exists() or config_path.read_text() != text:  # as an admin's restart: same file
            config_path.write_text(text)
        peer = NotifyPeer(root / notify_name)
        child_env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
        child_env.update({"NOTIFY_SOCKET": peer.address, "PYTHONUNBUFFERED": "1",
                          "CACHE_DIRECTORY": str(root / "cache"), **(env or {})})  # as systemd's CacheDirectory=
        log_path = root / "clawsvc.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen([sys.executable, "-m", "clawsvc", "run", "-c", str(config_path)], env=child_env,
                                 stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        started = cls(popen, root, config_path, config, peer, log_path, log_file)
        peer.watch(started.exited)
        return started

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def token(self) -> str:
        return Path(self.config["auth"]["token_file"]).read_text().strip()

    @property
    def state_dir(self) -> str:
        return str(Path(self.config["gateway"]["state_dir"]).absolute())

    @property
    def control_socket(self) -> Path:
        return Path(self.config["control"]["socket"])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def exited(self) -> str | None:
        """None while clawsvc runs; else its exit status and last log lines (waits on it give up at once)."""
        return exit_description(self.popen, "clawsvc", self.log)

    def wait_log(self, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
        """Poll the captured output (from byte offset `since`) until the regex shows up."""
        compiled = re.compile(pattern)
        return poll(lambda: compiled.search(self.log()[since:]), timeout, f"log line {pattern!r}:\n"
                    f"{self.log()[-3000:]}", gone=self.exited)

    def rewrite_config(self, text_or_config: str | dict[str, Any]) -> None:
        if isinstance(text_or_config, dict):
            self.config = text_or_config
            text_or_config = yaml.safe_dump(text_or_config, sort_keys=False)
        self.config_path.write_text(text_or_config)

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        result = control_client.request(self.control_socket, {"cmd": "status"}, timeout)
        assert isinstance(result, dict)
        return result

    def request(self, message: dict[str, Any], timeout: float = 10.0) -> Any:
        return control_client.request(self.control_socket, message, timeout)

    def wait_state(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            try:
                status = self.status()
            except (control_wire.ServiceNotRunning, control_wire.ControlError):
                return None
            return status if predicate(status) else None
        return poll(check, timeout, f"{what} (log tail:\n{self.log()[-3000:]})", every=0.1, gone=self.exited)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`clawsvc COMMAND -c CONFIG [ARGS]` against this service, as an admin runs it."""
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
        return subprocess.run([sys.executable, "-m", "clawsvc", args[0], "-c", str(self.config_path), *args[1:]],
                              env=env, capture_output=True, text=True, timeout=timeout)

    def send_signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"clawsvc still running after {timeout}s; log tail:\n{self.log()[-3000:]}") from None

    def terminate(self, timeout: float = 30.0) -> int:
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def leftovers(self) -> list[int]:
        """Live processes started for this service's gateway (found by its OPENCLAW_STATE_DIR)."""
        return processes_with_env("OPENCLAW_STATE_DIR", self.state_dir)

    def close(self) -> None:
        terminate(self.popen, 15)
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        poll(lambda: not self.leftovers(), 15, "gateway processes to go away")
        self._log_file.close()
        self.peer.close()
