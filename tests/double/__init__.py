"""Start and stop the gateway double (gateway_double.py) as a real child process in its own process group.

    with start_double(tmp_path, env={"DOUBLE_TICK_MS": "200"}) as gw:
        ws = websocket.create_connection(gw.url, suppress_origin=True)

For clawsvc itself, use `double_command()` as gateway.command: clawsvc appends `gateway run --port P ...`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from .staged import double_script, python

DOUBLE_SCRIPT = Path(__file__).with_name("gateway_double.py")


def double_command() -> tuple[str, ...]:
    """gateway.command for clawsvc: the staged Python and double (staged.py), wherever the checkout lives."""
    return (python(), double_script())


# Test ports come from below the kernel's ephemeral range (32768+ by default), so no outgoing connection or
# bind(0) elsewhere takes one between free_port() and the bind that uses it; under pytest-xdist every worker
# gets its own slice, so two workers never hand out the same port.
PORT_RANGE = range(20000, 32000)


@functools.cache
def _worker_ports() -> Iterator[int]:
    """This worker's slice of PORT_RANGE, from a random point (another run on the machine starts elsewhere)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(PORT_RANGE) // max(count, 1)
    first = PORT_RANGE.start + int(worker) * size if worker.isdigit() else PORT_RANGE.start
    offset = random.randrange(size)
    return itertools.cycle([*range(first + offset, first + size), *range(first, first + offset)])


def free_port() -> int:
    """A loopback TCP port nobody holds now and no other test of this run will be given."""
    for port in itertools.islice(_worker_ports(), len(PORT_RANGE)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise RuntimeError(f"no free loopback port in {PORT_RANGE.start}-{PORT_RANGE.stop - 1}")


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class DoubleProcess:
    """A running double: its Popen, port and token; stdout/stderr go to files under the test's tmp_path."""

    popen: subprocess.Popen[bytes]
    port: int
    token: str = field(repr=False)
    stdout_path: Path
    stderr_path: Path
    _files: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 10.0, stream: str = "stdout") -> re.Match[str]:
        """Poll the captured output until `pattern` (a regex) shows up; AssertionError after `timeout` seconds, or
        at once when the double has exited without it."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.popen.poll() is not None  # before reading: its output is complete then
            text = self.stdout() if stream == "stdout" else self.stderr()
            match = re.search(pattern, text)
            if match:
                return match
            if exited:
                raise AssertionError(f"{pattern!r} not in the double's {stream}: it exited with "
                                     f"{self.popen.returncode}:\n{text[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the double's {stream} after {timeout}s:\n{text[-2000:]}")
            time.sleep(0.02)

    def accepts_tcp(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
            return True
        return False

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.accepts_tcp():
            if self.popen.poll() is not None:
                raise RuntimeError(f"gateway double exited with {self.popen.returncode}:\n{self.stderr()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway double not listening on port {self.port} after {timeout}s")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL the whole process group (grandchildren included).

        Returns the double's exit status (negative for a signal), as Popen.returncode."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        for fh in self._files:
            fh.close()
        self._files.clear()
        return self.popen.returncode

    def __enter__(self) -> DoubleProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_double(tmp_path: Path, *, port: int | None = None, token: str | None = None,
                 env: dict[str, str] | None = None, args: tuple[str, ...] = (), wait: bool = True,
                 timeout: float = 10.0) -> DoubleProcess:
    """Spawn the double as `gateway run --port P --bind loopback --auth token --allow-unconfigured` + args.

    Waits until it accepts TCP (not the same as accepting `connect`, see DOUBLE_UNAVAILABLE_FOR) unless
    wait=False. DOUBLE_* variables of the calling environment are not inherited; pass them in `env`."""
    port = port or free_port()
    token = token or secrets.token_urlsafe(24)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("DOUBLE_", "OPENCLAW_"))}
    child_env.update({"OPENCLAW_GATEWAY_TOKEN": token, "PYTHONUNBUFFERED": "1", **(env or {})})
    tmp_path.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = tmp_path / f"double-{port}.out", tmp_path / f"double-{port}.err"
    out, err = stdout_path.open("wb"), stderr_path.open("wb")
    argv = [*double_command(), "gateway", "run", "--port", str(port), "--bind", "loopback", "--auth", "token",
            "--allow-unconfigured", *args]
    popen = subprocess.Popen(argv, env=child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                             start_new_session=True)
    proc = DoubleProcess(popen, port, token, stdout_path, stderr_path, [out, err])
    if wait:
        try:
            proc.wait_listening(timeout)
        except BaseException:
            proc.stop()
            raise
    return proc
