"""A squatter (another uid) on the gateway port never receives the token: at start, during our gateway's
start-up and during a restart backoff clawsvc names it and exits 1; a gateway of our own uid is still adopted."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from another_user import needs_another_user
from double import free_port, pid_alive, start_double
from faultkit import STARTED, Services, error_lines, ready, running_other_than, spawned
from service_proc import ServiceProcess
from waiting import poll

from clawsvc import exitcodes
from clawsvc.gateway.connection import GatewayConnection
from clawsvc.gateway.protocol import TransportError

SQUATTER = Path(__file__).parent.parent / "helpers" / "squatter.py"
NOBODY = 65534

pytestmark = needs_another_user


# tests/helpers/squatter.py's loop, but every connection is accepted by root and served by a forked child
# that then drops to uid 65534: /proc/net/tcp shows root's uid on the server end, its holder runs as nobody.
ROOT_ACCEPTS = f"""
import os, signal, sys
sys.path.insert(0, {str(SQUATTER.parent)!r})
import squatter
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
listener = squatter.bind(int(sys.argv[1]), False)
squatter.say("bound")
while True:
    conn, _ = listener.accept()
    if os.fork() == 0:
        listener.close()
        os.setgroups([])
        os.setresgid({NOBODY}, {NOBODY}, {NOBODY})
        os.setresuid({NOBODY}, {NOBODY}, {NOBODY})
        squatter.say(f"child {{os.getpid()}}")
        squatter.serve(conn)
        os._exit(0)
    conn.close()
"""


class Squatter:
    """tests/helpers/squatter.py as uid 65534 (or ROOT_ACCEPTS as root); everything it receives comes back
    through its stdout pipe."""

    def __init__(self, port: int, wait: bool = False, root_accepts: bool = False) -> None:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                sys.executable, str(SQUATTER), str(port), *(["--wait"] if wait else [])]
        if root_accepts:
            argv = [sys.executable, "-c", ROOT_ACCEPTS, str(port)]
        self.port = port
        self.lines: list[str] = []
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.strip())

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_bound(self) -> None:
        poll(lambda: "bound" in self.lines or self.popen.poll() is not None, 15, "the squatter to bind")
        assert "bound" in self.lines, f"squatter exited with {self.popen.returncode}"

    def _hex(self, kind: str) -> list[bytes]:
        return [bytes.fromhex(line.split()[1]) for line in list(self.lines) if line.startswith(f"{kind} ")]

    def stream(self) -> bytes:
        """Every byte received, in order (client frames still masked)."""
        return b"".join(self._hex("recv"))

    def got(self, secret: str) -> bool:
        """True when `secret` reached the squatter, raw or inside an (unmasked) frame."""
        return secret.encode() in self.stream() or any(secret.encode() in frame for frame in self._hex("frame"))

    def saw_upgrade(self) -> bool:
        return b"sec-websocket-key" in self.stream().lower()

    def children(self) -> list[int]:
        """The pids of ROOT_ACCEPTS's forked servers."""
        return [int(line.split()[1]) for line in list(self.lines) if line.startswith("child ")]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # its own session: the forked servers too
        self.popen.wait()
        self._reader.join(5)


@pytest.fixture
def squatters() -> Iterator[list[Squatter]]:
    started: list[Squatter] = []
    yield started
    for squatter in started:
        squatter.stop()


def squat(squatters: list[Squatter], port: int, wait: bool = False, root_accepts: bool = False) -> Squatter:
    squatter = Squatter(port, wait, root_accepts)
    squatters.append(squatter)
    if not wait:
        squatter.wait_bound()
    return squatter


def refused(svc: ServiceProcess, squatter: Squatter) -> str:
    """clawsvc exited 1 with one ERROR line naming the squatter (pid and uid); the token never reached it."""
    assert svc.wait(30) == exitcodes.FAIL, svc.log()[-3000:]
    assert not squatter.got(svc.token), "the squatter received the gateway token"
    lines = error_lines(svc, f"pid {squatter.pid} ")
    assert len(lines) == 1, svc.log()[-3000:]
    assert f"uid {NOBODY}" in lines[0]
    assert svc.leftovers() == []
    return lines[0]


def test_the_squatter_records_a_token_sent_to_it(squatters: list[Squatter]) -> None:
    """The probe the cases below rely on: a client that skips the check hands the squatter its token."""
    squatter = squat(squatters, free_port())
    token = secrets.token_urlsafe(32)
    connection = GatewayConnection(f"ws://127.0.0.1:{squatter.port}/", token, verify_peer=None,
                                   handshake_timeout=1.0)
    with pytest.raises(TransportError):
        connection.connect()
    poll(lambda: squatter.got(token), 10, "the token to reach the squatter")


def test_squatter_at_start_with_adoption_is_named_and_gets_no_token(services: Services,
                                                                    squatters: list[Squatter]) -> None:
    squatter = squat(squatters, free_port())
    svc = services.start(extra={"gateway": {"port": squatter.port, "adopt_existing": True}})
    line = refused(svc, squatter)
    assert squatter.saw_upgrade(), "clawsvc never got as far as the WebSocket upgrade: the check went untested"
    assert "token was not sent" in line
    assert spawned(svc) == []


def test_adoption_refuses_a_root_socket_held_by_a_process_that_dropped_to_another_uid(
        services: Services, squatters: list[Squatter]) -> None:
    """The socket's uid in /proc/net/tcp is who created it (root, like us), not who holds it: the holder's
    own uids decide."""
    squatter = squat(squatters, free_port(), root_accepts=True)
    svc = services.start(extra={"gateway": {"port": squatter.port, "adopt_existing": True}})
    assert svc.wait(30) == exitcodes.FAIL, svc.log()[-3000:]
    assert squatter.saw_upgrade(), "clawsvc never got as far as the WebSocket upgrade: the check went untested"
    assert not squatter.got(svc.token), "the squatter received the gateway token"
    lines = error_lines(svc, "token was not sent")
    assert len(lines) == 1, svc.log()[-3000:]
    assert f"uid {NOBODY}" in lines[0]
    assert any(f"pid {child} " in lines[0] for child in squatter.children()), (lines[0], squatter.children())
    assert spawned(svc) == []


def test_squatter_at_start_without_adoption_is_named_and_gets_no_token(services: Services,
                                                                       squatters: list[Squatter]) -> None:
    squatter = squat(squatters, free_port())
    svc = services.start(extra={"gateway": {"port": squatter.port, "adopt_existing": False}})
    refused(svc, squatter)
    assert spawned(svc) == []


def test_squatter_during_our_gateways_start_up_gets_no_token(services: Services,
                                                             squatters: list[Squatter]) -> None:
    svc = services.start(double_env={"DOUBLE_STARTUP_DELAY": "8"}, extra={"gateway": {"start_timeout": 20.0}})
    pid = int(svc.wait_log(STARTED, 20).group(1))
    squatter = squat(squatters, svc.config["gateway"]["port"])
    line = refused(svc, squatter)
    assert squatter.saw_upgrade(), "clawsvc never got as far as the WebSocket upgrade: the check went untested"
    assert f"not by the gateway clawsvc started (pid {pid})" in line
    assert not pid_alive(pid)


def test_squatter_during_a_restart_backoff_gets_no_token(services: Services, squatters: list[Squatter]) -> None:
    # every gateway listens 1 s after its start, so the squatter wins the port however short the backoff
    svc = services.start(double_env={"DOUBLE_STARTUP_DELAY": "1"},
                         extra={"reconnect": {"base_delay": 2.0, "max_delay": 2.0}})
    first = ready(svc)["pid"]
    os.kill(first, signal.SIGKILL)  # the first failure restarts at once; the next one backs off
    second = running_other_than(svc, first)["pid"]
    squatter = squat(squatters, svc.config["gateway"]["port"], wait=True)
    os.kill(second, signal.SIGKILL)
    poll(lambda: "bound" in squatter.lines, 15, "the squatter to take the port of the killed gateway")
    refused(svc, squatter)
    assert squatter.saw_upgrade(), "clawsvc never got as far as the WebSocket upgrade: the check went untested"


def test_a_gateway_of_our_own_uid_is_still_adopted(services: Services, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    with start_double(tmp_path / "existing", token=token) as existing:
        svc = services.start(extra={"gateway": {"port": existing.port}})
        assert svc.peer.wait_for("^READY=1", 20).text.endswith("adopted")
        status = svc.status()
        assert status["state"] == "running" and status["owned"] is False and status["pid"] is None
        assert svc.terminate() == 0
        assert existing.popen.poll() is None and spawned(svc) == []
