"""The control socket under load and attack: another uid, 20 concurrent callers, calls in flight when the
gateway is SIGKILLed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from double import pid_alive
from faultkit import (
    Callers,
    Services,
    cli,
    finish,
    health_ok,
    ready,
    requests_seen,
    running_other_than,
    spawned,
    stops_clean,
)
from service_proc import poll

from clawsvc import exitcodes

NOBODY = 65534


@pytest.fixture
def open_services() -> Iterator[Services]:
    """Services rooted in a directory other users may traverse, so that uid 65534 can read the config file."""
    root = Path(tempfile.mkdtemp(prefix="clawsvc-faults-"))
    root.chmod(0o711)
    started = Services(root)
    try:
        yield started
    finally:
        started.close()
        shutil.rmtree(root)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_another_uid_is_refused_by_file_mode_and_by_peer_credentials(open_services: Services) -> None:
    svc = open_services.start()
    pid = ready(svc)["pid"]
    svc.config_path.chmod(0o644)

    status = cli(svc, "status", user=NOBODY)
    assert status.returncode == exitcodes.NOT_RUNNING
    assert f"permission denied opening {svc.control_socket}" in status.stderr, status.stderr
    assert cli(svc, "rpc", "health", user=NOBODY).returncode == exitcodes.FAIL

    svc.control_socket.parent.chmod(0o711)  # as if an admin loosened the modes: SO_PEERCRED still refuses
    svc.control_socket.chmod(0o666)
    refusal = f"EACCES: uid {NOBODY} is not allowed to control clawsvc"
    for args, code in ((("status",), exitcodes.NOT_RUNNING), (("rpc", "health"), exitcodes.FAIL),
                       (("restart-gateway",), exitcodes.FAIL)):
        result = cli(svc, *args, user=NOBODY)
        assert result.returncode == code and refusal in result.stderr, (args, result.stderr)
        assert result.stdout == ""
    assert svc.log().count(f"refused a request: uid {NOBODY} is not allowed") == 3

    status = svc.status()
    assert status["state"] == "running" and status["pid"] == pid and spawned(svc) == [pid]
    stops_clean(svc)


def test_twenty_concurrent_rpc_callers_all_get_their_answer(services: Services, callers: Callers) -> None:
    svc = services.start(events=True, extra={"health": {"interval": 30.0}})
    status = ready(svc)
    running = [callers.start(svc, "rpc", "health") for _ in range(20)]
    for popen in running:
        code, out, err = finish(popen)
        assert code == 0, err
        assert json.loads(out)["ok"] is True
    seen = requests_seen(svc, "health")
    assert len(seen) >= 20
    assert len({request["conn"] for request in seen}) == 1, "all calls go through the service's one connection"
    now = svc.status()
    assert now["state"] == "running" and now["pid"] == status["pid"] and now["connectedAt"] == status["connectedAt"]
    stops_clean(svc)


def test_calls_in_flight_when_the_gateway_is_sigkilled_fail_at_once_then_it_recovers(services: Services,
                                                                                     callers: Callers) -> None:
    svc = services.start(events=True)
    pid = ready(svc)["pid"]
    waiting = [callers.start(svc, "rpc", "double.sleep", '{"ms": 60000}', "--timeout", "60") for _ in range(5)]
    poll(lambda: len(requests_seen(svc, "double.sleep")) == 5, 20, "all five calls to reach the double")
    os.kill(pid, signal.SIGKILL)
    for popen in waiting:
        code, out, err = finish(popen, timeout=15)  # far below their 60 s timeout
        assert code == exitcodes.FAIL and out == ""
        assert "CONNECTION_LOST" in err and "double.sleep" in err, err
    status = running_other_than(svc, pid)
    assert not pid_alive(pid)
    assert status["lastExit"] == "killed by SIGKILL" and status["restarts"] == 1
    health_ok(svc)
    stops_clean(svc)
