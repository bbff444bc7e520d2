"""Live tests under a real systemd 252 booted as PID 1 in private namespaces (tests/systemd_guest.py).

First the harness itself, with a tiny Type=notify unit (python + sdnotify), so that part stands on its own;
then the shipped clawsvc.service, installed with `clawsvc install --system` in the guest and running the real
gateway under the unit's full hardening. Run them alone with:  pytest -m systemd tests/test_systemd_service.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from realgw import QUIET_ENV
from systemd_guest import CGROUP2, Guest, booted_systemd, guest_path_for

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(900)]

UNITS = Path(__file__).resolve().parent.parent / "units"
CONFIG = "/etc/clawsvc/clawsvc.yaml"
PORT = 18789  # the guest has its own network namespace: the default port is free there
START_TIMEOUT = 240.0  # systemctl start of clawsvc: the gateway needs ~7 s idle, far more on a loaded machine
RESTART_SEC = 5.0  # RestartSec= of clawsvc.service

DEMO_UNIT = """\
[Unit]
Description=sd_notify demo for the harness

[Service]
Type=notify
NotifyAccess=main
ExecStart=/opt/clawsvc/bin/python /opt/demo/notify_demo.py
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=10s
"""

# READY only after a pause, so a `systemctl start` that did not wait for it would see "activating".
DEMO_SCRIPT = """\
import signal, sys, threading, time
import sdnotify

notifier = sdnotify.SystemdNotifier(debug=True)
hup, term = threading.Event(), threading.Event()
signal.signal(signal.SIGHUP, lambda *_: hup.set())
signal.signal(signal.SIGTERM, lambda *_: term.set())
print("<6>demo: starting up", file=sys.stderr, flush=True)
print("<4>demo: this one is a warning", file=sys.stderr, flush=True)
term.wait(1.5)
notifier.notify("READY=1\\nSTATUS=serving")
reloads = 0
while not term.is_set():
    notifier.notify("WATCHDOG=1")
    if hup.wait(1.0):
        hup.clear()
        reloads += 1
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.notify(f"RELOADING=1\\nMONOTONIC_USEC={usec}")
        notifier.notify(f"READY=1\\nSTATUS=reloaded {reloads}")
notifier.notify("STOPPING=1")
print("<6>demo: stopped", file=sys.stderr, flush=True)
"""


def journal_entries(guest: Guest, unit: str, priority: str | None = None) -> list[dict[str, str]]:
    out = guest.journal(unit, priority=priority, output="json")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def messages(entries: list[dict[str, str]]) -> list[str]:
    return [str(e.get("MESSAGE", "")) for e in entries]


# ---------------------------------------------------------------- the harness, with a tiny notify unit

@pytest.fixture(scope="module")
def demo_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    with booted_systemd(tmp_path_factory.mktemp("demo-guest"), units={"demo.service": DEMO_UNIT},
                        files={"/opt/demo/notify_demo.py": DEMO_SCRIPT}) as guest:
        yield guest


def test_guest_is_a_booted_systemd_in_its_own_namespaces(demo_guest):
    assert demo_guest.run("cat", "/proc/1/comm", check=True).stdout.strip() == "systemd"
    assert demo_guest.systemctl("is-system-running").stdout.strip() in ("running", "degraded")
    assert os.readlink(f"/proc/{demo_guest.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{demo_guest.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    interfaces = [line.split(":")[0].strip() for line in demo_guest.run("cat", "/proc/net/dev").stdout.splitlines()[2:]]
    assert interfaces == ["lo"]


def test_start_returns_only_after_ready_with_status(demo_guest):
    demo_guest.systemctl("start", "demo.service", check=True, timeout=60)
    props = demo_guest.show("demo.service", "ActiveState", "SubState", "StatusText", "MainPID")
    assert (props["ActiveState"], props["SubState"], props["StatusText"]) == ("active", "running", "serving")
    status = demo_guest.systemctl("status", "demo.service").stdout
    assert "Active: active (running)" in status and 'Status: "serving"' in status


def test_journal_keeps_the_priority_prefixes(demo_guest):
    demo_guest.systemctl("start", "demo.service", check=True, timeout=60)
    everything = journal_entries(demo_guest, "demo.service")
    by_message = {e["MESSAGE"]: int(e["PRIORITY"]) for e in everything if e.get("MESSAGE", "").startswith("demo:")}
    assert by_message["demo: starting up"] == 6
    assert by_message["demo: this one is a warning"] == 4
    warnings = messages(journal_entries(demo_guest, "demo.service", priority="warning"))
    assert "demo: this one is a warning" in warnings and "demo: starting up" not in warnings


def test_reload_goes_through_reloading_and_ready(demo_guest):
    demo_guest.systemctl("start", "demo.service", check=True, timeout=60)
    before = demo_guest.show("demo.service", "MainPID")["MainPID"]
    demo_guest.systemctl("reload", "demo.service", check=True, timeout=60)
    demo_guest.wait_for("the demo to report its reload",
                        lambda: demo_guest.show("demo.service", "StatusText")["StatusText"] == "reloaded 1")
    after = demo_guest.show("demo.service", "MainPID", "ActiveState")
    assert (after["MainPID"], after["ActiveState"]) == (before, "active")


def test_stop_ends_the_unit_cleanly(demo_guest):
    demo_guest.systemctl("start", "demo.service", check=True, timeout=60)
    demo_guest.systemctl("stop", "demo.service", check=True, timeout=60)
    props = demo_guest.show("demo.service", "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    assert "demo: stopped" in messages(journal_entries(demo_guest, "demo.service"))


def test_teardown_leaves_no_process_cgroup_or_mount(tmp_path):
    with booted_systemd(tmp_path) as guest:
        pid, cgroup = guest.pid, CGROUP2 / guest.cgroup
        assert (cgroup / "init.scope").is_dir(), "the guest's systemd runs in its own cgroup subtree"
    assert not Path(f"/proc/{pid}").exists()
    assert not cgroup.exists()
    assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()
    assert list((tmp_path / "scratch").iterdir()) == [], "the guest's tmpfs lived only in its mount namespace"


# ---------------------------------------------------------------- clawsvc.service with the real gateway

def guest_config(command: tuple[str, ...]) -> str:
    env = "".join(f"    {key}: \"{value}\"\n" for key, value in QUIET_ENV.items())
    return (f"gateway:\n  command: {json.dumps(list(command))}\n  port: {PORT}\n  start_timeout: 180s\n"
            f"  stop_timeout: 10s\n  env:\n{env}"
            "health:\n  interval: 5s\n  timeout: 4s\n  failures: 2\n"
            "reconnect:\n  base_delay: 500ms\n  max_delay: 5s\n")




@pytest.fixture(scope="module")
def clawsvc_guest(tmp_path_factory: pytest.TempPathFactory, gateway_install) -> Iterator[Guest]:
    """A guest with the test config in /etc/clawsvc and clawsvc installed by `clawsvc install --system`."""
    gateway_root = Path(os.path.commonpath([gateway_install.node, gateway_install.entry]))
    guest_root = guest_path_for(gateway_root, "gateway")
    command = tuple(str(guest_root / Path(p).relative_to(gateway_root)) for p in gateway_install.command)
    with booted_systemd(tmp_path_factory.mktemp("clawsvc-guest"), files={CONFIG: guest_config(command)},
                        binds={gateway_root: guest_root}) as guest:
        installed = guest.run("clawsvc", "install", "--system", "--no-start", check=True)
        assert f"kept     {CONFIG}" in installed.stdout, installed.stdout
        assert "user     clawsvc" in installed.stdout, installed.stdout
        guest.systemctl("daemon-reload", check=True)
        yield guest
        print(guest.journal("clawsvc.service")[-6000:])  # shown by pytest when a test failed


def ensure_running(guest: Guest) -> dict[str, str]:
    if guest.show("clawsvc.service", "ActiveState")["ActiveState"] != "active":
        guest.systemctl("reset-failed", "clawsvc.service")
        result = guest.systemctl("start", "clawsvc.service", timeout=START_TIMEOUT)
        assert result.returncode == 0, f"{result.stderr}\n{guest.journal('clawsvc.service')[-4000:]}"
    return guest.show("clawsvc.service", "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")


def clawsvc_as(guest: Guest, user: str, *args: str) -> tuple[int, str, str]:
    """`clawsvc ARGS -c CONFIG` as an admin runs it: `runuser -u USER`, no login session (no XDG_RUNTIME_DIR)."""
    result = guest.run("clawsvc", *args, "-c", CONFIG, user=user, timeout=60)
    return result.returncode, result.stdout, result.stderr


def gateway_pid(guest: Guest) -> int:
    code, out, err = clawsvc_as(guest, "clawsvc", "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "running"
    return int(status["pid"])


@pytest.mark.realgateway
def test_installed_unit_is_the_shipped_one(clawsvc_guest):
    installed = clawsvc_guest.path("/etc/systemd/system/clawsvc.service").read_text()
    assert installed == (UNITS / "clawsvc.service").read_text(), "ExecStart in the guest is /usr/local/bin/clawsvc"


@pytest.mark.realgateway
def test_start_returns_after_ready_and_the_gateway_answers(clawsvc_guest):
    clawsvc_guest.systemctl("stop", "clawsvc.service", timeout=120)
    props = ensure_running(clawsvc_guest)
    assert (props["ActiveState"], props["SubState"]) == ("active", "running")
    assert props["StatusText"].startswith("running"), props["StatusText"]
    assert 'Status: "running' in clawsvc_guest.systemctl("status", "clawsvc.service").stdout
    # The defaults of the installed config land in the unit's StateDirectory= and RuntimeDirectory=.
    assert clawsvc_guest.path("/var/lib/clawsvc/openclaw").is_dir()
    assert clawsvc_guest.path("/run/clawsvc/control.sock").is_socket()
    # READY=1 was sent after hello-ok, so the gateway answers right now, without any waiting.
    code, out, err = clawsvc_as(clawsvc_guest, "clawsvc", "rpc", "health")
    assert code == 0, err
    assert isinstance(json.loads(out), dict)


@pytest.mark.realgateway
def test_status_and_rpc_work_for_the_service_user_and_root(clawsvc_guest):
    ensure_running(clawsvc_guest)
    for user in ("clawsvc", "root"):
        code, out, err = clawsvc_as(clawsvc_guest, user, "status")
        assert code == 0, err
        assert "running" in out
        code, out, err = clawsvc_as(clawsvc_guest, user, "rpc", "health")
        assert code == 0, err
        json.loads(out)


@pytest.mark.realgateway
def test_status_and_rpc_are_refused_for_another_uid(clawsvc_guest):
    ensure_running(clawsvc_guest)
    for args in (("status",), ("rpc", "health")):
        code, out, err = clawsvc_as(clawsvc_guest, "nobody", *args)
        assert code != 0 and out == ""
        assert "EACCES" in err and "permission denied" in err


@pytest.mark.realgateway
def test_journal_warning_filter_holds_only_warnings_and_worse(clawsvc_guest):
    ensure_running(clawsvc_guest)
    everything = journal_entries(clawsvc_guest, "clawsvc.service")
    own = [e for e in everything if e.get("_PID") == clawsvc_guest.show("clawsvc.service", "MainPID")["MainPID"]]
    assert own, "clawsvc logs to the journal"
    assert {int(e["PRIORITY"]) for e in own} & {6, 7}, "info lines are recorded at info, not at a default level"
    assert not [m for m in messages(own) if m[:1] == "<" and m[1:2].isdigit()], "prefixes are parsed, not kept"
    info_lines = {e["MESSAGE"] for e in own if int(e["PRIORITY"]) >= 5}
    warnings = journal_entries(clawsvc_guest, "clawsvc.service", priority="warning")
    assert all(int(e["PRIORITY"]) <= 4 for e in warnings)
    assert not info_lines & set(messages(warnings))


@pytest.mark.realgateway
def test_reload_applies_and_broken_yaml_keeps_the_service_up(clawsvc_guest):
    props = ensure_running(clawsvc_guest)
    config = clawsvc_guest.path(CONFIG)
    good = config.read_text()
    clawsvc_guest.systemctl("reload", "clawsvc.service", check=True, timeout=120)
    assert clawsvc_guest.show("clawsvc.service", "ActiveState", "MainPID") == \
        {"ActiveState": "active", "MainPID": props["MainPID"]}
    try:
        config.write_text(good + "gateway: [this is: not valid\n")
        clawsvc_guest.systemctl("reload", "clawsvc.service", timeout=120)
        clawsvc_guest.wait_for("clawsvc to log the rejected reload", lambda: any(
            CONFIG in m for m in messages(journal_entries(clawsvc_guest, "clawsvc.service", priority="warning"))))
        after = clawsvc_guest.show("clawsvc.service", "ActiveState", "SubState", "MainPID", "NRestarts")
        assert after == {"ActiveState": "active", "SubState": "running", "MainPID": props["MainPID"],
                         "NRestarts": props["NRestarts"]}
    finally:
        config.write_text(good)
        clawsvc_guest.systemctl("reload", "clawsvc.service", timeout=120)
    code, _, err = clawsvc_as(clawsvc_guest, "clawsvc", "rpc", "health")  # the CLI needs the good file, too
    assert code == 0, err
    assert clawsvc_guest.show("clawsvc.service", "MainPID")["MainPID"] == props["MainPID"]


@pytest.mark.realgateway
def test_killed_gateway_is_replaced_while_the_unit_stays_up(clawsvc_guest):
    props = ensure_running(clawsvc_guest)
    victim = gateway_pid(clawsvc_guest)
    clawsvc_guest.run("kill", "-9", str(victim), check=True)

    def replaced() -> bool:
        code, out, _ = clawsvc_as(clawsvc_guest, "clawsvc", "status", "--json")
        return code == 0 and json.loads(out)["state"] == "running" and json.loads(out)["pid"] != victim
    clawsvc_guest.wait_for("a new gateway to be running", replaced, timeout=START_TIMEOUT, interval=1.0)
    after = clawsvc_guest.show("clawsvc.service", "ActiveState", "MainPID", "NRestarts")
    assert after == {"ActiveState": "active", "MainPID": props["MainPID"], "NRestarts": props["NRestarts"]}
    assert clawsvc_as(clawsvc_guest, "clawsvc", "rpc", "health")[0] == 0


@pytest.mark.realgateway
def test_stop_leaves_no_process_of_the_unit(clawsvc_guest):
    ensure_running(clawsvc_guest)
    cgroup = clawsvc_guest.show("clawsvc.service", "ControlGroup")["ControlGroup"]
    clawsvc_guest.systemctl("stop", "clawsvc.service", check=True, timeout=120)
    props = clawsvc_guest.show("clawsvc.service", "ActiveState", "Result", "ExecMainStatus")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    procs = clawsvc_guest.path(f"/sys/fs/cgroup{cgroup}/cgroup.procs")
    assert not procs.exists() or procs.read_text().strip() == ""
    assert clawsvc_guest.run("pgrep", "-u", "clawsvc").stdout.strip() == ""


@pytest.mark.realgateway
def test_bad_config_fails_with_78_and_does_not_loop(clawsvc_guest):
    clawsvc_guest.systemctl("stop", "clawsvc.service", timeout=120)
    config = clawsvc_guest.path(CONFIG)
    good = config.read_text()
    try:
        config.write_text(good + "healht:\n  interval: 5s\n")
        result = clawsvc_guest.systemctl("start", "clawsvc.service", timeout=120)
        assert result.returncode != 0
        failed = {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78", "NRestarts": "0"}
        assert clawsvc_guest.show("clawsvc.service", *failed) == failed
        errors = messages(journal_entries(clawsvc_guest, "clawsvc.service", priority="warning"))
        assert any("healht" in m for m in errors), errors[-5:]
        # RestartPreventExitStatus=78: past RestartSec= it is still failed, never restarted.
        try:
            clawsvc_guest.wait_for("a restart that must not happen", lambda: clawsvc_guest.show(
                "clawsvc.service", *failed) != failed, timeout=RESTART_SEC * 2, interval=0.5)
        except AssertionError:
            pass
        else:
            pytest.fail(f"clawsvc.service left 'failed': {clawsvc_guest.show('clawsvc.service', *failed)}")
    finally:
        config.write_text(good)
        clawsvc_guest.systemctl("reset-failed", "clawsvc.service")
