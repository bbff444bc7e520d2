"""Children: only what an earlier clawsvc provably started is killed as a leftover; nothing the gateway command
forks outlives a stop or stays a zombie; a secret across the 64 KiB line cut is still masked."""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from double import double_command, pid_alive
from faultkit import Services, cli, gone, ready, running_other_than, stops_clean
from service_proc import ServiceProcess, poll

from clawsvc.gateway import leftovers
from clawsvc.gateway.output import MAX_LINE, TRUNCATED

# gateway.command wrapper: maybe print a file, maybe start a sleeping daemon (writing its pid), then exec the double;
# a stubborn daemon ignores SIGTERM, so only the SIGKILL HELPER_GRACE (3 s) after the gateway's exit ends it
WRAPPER = """#!/bin/sh
[ -n "$PRINT_FILE" ] && cat "$PRINT_FILE"
daemon='echo $$ > "$DAEMON_PIDFILE.tmp" && mv "$DAEMON_PIDFILE.tmp" "$DAEMON_PIDFILE" && exec sleep 1000'
case "$DAEMON_MODE" in
  child) setsid sh -c "$daemon" </dev/null >/dev/null 2>&1 & ;;
  orphan) setsid -f sh -c "$daemon" </dev/null >/dev/null 2>&1 ;;
  stubborn) setsid sh -c "trap '' TERM; $daemon" </dev/null >/dev/null 2>&1 & ;;
esac
exec "$@"
"""
Strangers = list[subprocess.Popen[bytes]]


@pytest.fixture
def strangers() -> Iterator[Strangers]:
    """Processes a test starts that clawsvc must not touch; killed and reaped in teardown."""
    started: Strangers = []
    yield started
    for popen in started:
        popen.kill()
        popen.wait()


def sleeper(strangers: Strangers, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    strangers.append(subprocess.Popen(["sleep", "1000"], env={**os.environ, **(env or {})},
                                      start_new_session=True))
    return strangers[-1]


def wrapped(root: Path, state_dir: Path, **env: str) -> dict[str, Any]:
    """Config extra: gateway.command is the wrapper around the double, with these env knobs."""
    wrapper = root / "wrapper.sh"
    root.mkdir(parents=True, exist_ok=True)
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    return {"gateway": {"command": [str(wrapper), *double_command()], "state_dir": str(state_dir), "env": env}}


def daemon_pid(pidfile: Path) -> int:
    poll(pidfile.exists, 10, f"the daemon to write {pidfile}")
    return int(pidfile.read_text())


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_an_admin_shell_that_exported_the_state_dir_survives_the_start(services: Services, tmp_path: Path,
                                                                       strangers: Strangers) -> None:
    shell = sleeper(strangers, {"OPENCLAW_STATE_DIR": str(tmp_path / "state")})
    svc = services.start()
    ready(svc)
    assert shell.poll() is None and pid_alive(shell.pid)
    assert svc.terminate() == 0
    assert shell.poll() is None, "clawsvc's stop must not touch a process it did not start"


def test_a_daemon_left_by_a_sigkilled_clawsvc_is_killed_at_the_next_start(services: Services,
                                                                            tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = services.start(extra=wrapped(tmp_path, state, DAEMON_MODE="child",
                                         DAEMON_PIDFILE=str(tmp_path / "daemon1.pid")))
    gateway = ready(first)["pid"]
    daemon = daemon_pid(tmp_path / "daemon1.pid")
    pidfile = state / leftovers.PIDFILE
    assert pidfile.stat().st_mode & 0o777 == 0o600
    first.popen.kill()
    first.wait(10)
    gone([gateway])  # the parent-death signal reaches the gateway's main process only
    assert pid_alive(daemon), "the setsid'd daemon must outlive the killed clawsvc for this test to mean anything"

    second_root = tmp_path / "second"
    second = services.start(root=second_root, extra=wrapped(second_root, state, DAEMON_MODE="child",
                                                            DAEMON_PIDFILE=str(tmp_path / "daemon2.pid")))
    ready(second)
    gone([daemon])
    assert f"left over from an earlier gateway of {state}" in second.log()
    assert pid_alive(daemon_pid(tmp_path / "daemon2.pid")), "the new gateway's own daemon is not a leftover"
    stops_clean(second)


def start_with_pidfile(services: Services, tmp_path: Path, record: leftovers.PidRecord) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    leftovers.write_pidfile(state, record)
    ready(services.start())


def test_a_pidfile_naming_a_reused_pid_spares_that_process(services: Services, tmp_path: Path,
                                                           strangers: Strangers) -> None:
    stranger = sleeper(strangers, {"OPENCLAW_STATE_DIR": str(tmp_path / "state")})
    record = leftovers.PidRecord.of(stranger.pid, secrets.token_hex(16))
    assert record is not None
    start_with_pidfile(services, tmp_path, dataclasses.replace(record, start=record.start - 1))
    assert stranger.poll() is None and pid_alive(stranger.pid)


def test_a_pidfile_from_another_boot_spares_the_process_it_names(services: Services, tmp_path: Path,
                                                                  strangers: Strangers) -> None:
    stranger = sleeper(strangers)
    record = leftovers.PidRecord.of(stranger.pid, secrets.token_hex(16))
    assert record is not None
    start_with_pidfile(services, tmp_path, dataclasses.replace(record, boot="0" * 32))
    assert stranger.poll() is None and pid_alive(stranger.pid)


def test_a_pidfile_naming_the_very_process_kills_it(services: Services, tmp_path: Path, strangers: Strangers) -> None:
    # the control for the two tests above: pid, start time and boot id all match, so it is a leftover
    leftover = sleeper(strangers)
    record = leftovers.PidRecord.of(leftover.pid, secrets.token_hex(16))
    assert record is not None
    start_with_pidfile(services, tmp_path, record)
    assert poll(lambda: leftover.poll(), 10, "the recorded process to be killed") == -signal.SIGKILL


def test_a_daemon_double_forked_by_the_gateway_command_does_not_outlive_a_stop(services: Services,
                                                                               tmp_path: Path) -> None:
    svc = services.start(extra=wrapped(tmp_path, tmp_path / "state", DAEMON_MODE="orphan",
                                       DAEMON_PIDFILE=str(tmp_path / "daemon.pid")))
    ready(svc)
    daemon = daemon_pid(tmp_path / "daemon.pid")
    assert parent_of(daemon) == svc.pid, "the orphaned daemon must be adopted by clawsvc, the subreaper"
    stops_clean(svc)
    assert not pid_alive(daemon)
    assert not (tmp_path / "state" / leftovers.PIDFILE).exists(), "a clean stop removes the pidfile"


def test_a_daemon_orphaned_by_a_crashed_gateway_is_ended_and_reaped(services: Services, tmp_path: Path) -> None:
    svc = services.start(extra=wrapped(tmp_path, tmp_path / "state", DAEMON_MODE="orphan",
                                       DAEMON_PIDFILE=str(tmp_path / "daemon.pid")))
    gateway = ready(svc)["pid"]
    daemon = daemon_pid(tmp_path / "daemon.pid")
    assert parent_of(daemon) == svc.pid
    (tmp_path / "daemon.pid").unlink()
    os.kill(gateway, signal.SIGKILL)
    running_other_than(svc, gateway)
    # only clawsvc, its parent, can reap it: its /proc entry going while clawsvc runs proves it did
    poll(lambda: not Path(f"/proc/{daemon}").exists(), 15, f"daemon {daemon} to be killed and reaped")
    assert pid_alive(daemon_pid(tmp_path / "daemon.pid"))  # the new gateway's daemon runs
    stops_clean(svc)


def stubborn(services: Services, tmp_path: Path) -> tuple[ServiceProcess, int, int]:
    """clawsvc whose gateway leaves a daemon that ignores SIGTERM: (service, gateway pid, daemon pid)."""
    svc = services.start(extra=wrapped(tmp_path, tmp_path / "state", DAEMON_MODE="stubborn",
                                       DAEMON_PIDFILE=str(tmp_path / "daemon.pid")))
    gateway = ready(svc)["pid"]
    daemon = daemon_pid(tmp_path / "daemon.pid")
    (tmp_path / "daemon.pid").unlink()  # the next gateway's daemon writes it again
    return svc, gateway, daemon


def respawned(svc: ServiceProcess, gateway: int) -> int:
    """The pid of the next gateway, as soon as status shows one (long before it is ready)."""
    status = svc.wait_state(lambda s: s["pid"] not in (None, gateway), 15, f"a gateway other than pid {gateway}")
    return int(status["pid"])


def test_a_planned_restart_does_not_wait_for_the_old_gateways_stubborn_daemon(services: Services,
                                                                              tmp_path: Path) -> None:
    svc, gateway, daemon = stubborn(services, tmp_path)
    assert cli(svc, "restart-gateway").returncode == 0
    respawned(svc, gateway)
    assert pid_alive(daemon), "the new gateway must be spawned before the old one's helpers are ended"
    poll(lambda: not Path(f"/proc/{daemon}").exists(), 15, f"old daemon {daemon} to be killed and reaped")
    running_other_than(svc, gateway)
    stops_clean(svc)


def test_a_stop_ends_a_stubborn_daemon_before_clawsvc_exits(services: Services, tmp_path: Path) -> None:
    svc, _, daemon = stubborn(services, tmp_path)
    stops_clean(svc)
    assert not pid_alive(daemon)


def test_a_stop_during_a_crash_sweep_waits_for_that_sweep(services: Services, tmp_path: Path) -> None:
    svc, gateway, daemon = stubborn(services, tmp_path)
    os.kill(gateway, signal.SIGKILL)
    respawned(svc, gateway)
    assert pid_alive(daemon), "the crashed gateway's daemon must still be being swept for this test to mean anything"
    stops_clean(svc)
    assert not pid_alive(daemon), "clawsvc exited before ending what the crashed gateway left behind"


def test_a_token_across_the_line_cut_is_never_logged(services: Services, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    line = tmp_path / "long-line.txt"
    line.write_text("x" * (MAX_LINE - 10) + token + "y" * 100 + "\n")
    svc = services.start(extra=wrapped(tmp_path, tmp_path / "state", PRINT_FILE=str(line)))
    ready(svc)
    assert svc.token == token
    svc.wait_log(r"x{1000}.*" + re.escape(TRUNCATED), 10)
    stops_clean(svc)
    log = svc.log()
    assert token not in log and token[:6] not in log
