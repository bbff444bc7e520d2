"""`clawsvc uninstall --system` in a booted systemd 252 (tests/systemd_guest.py) after `clawsvc install --system` with
the real gateway: no unit and no gateway process left, state and config kept; then `--purge` removes those (never
the shared gateway runtime); a second run has nothing to remove. One guest for the module; the tests build on each
other in file order. Run alone with:  pytest -m systemd tests/test_systemd_uninstall.py
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd_guest import Guest, booted_systemd
from test_systemd_install import farm

from clawsvc.commands.runtime.provision import Installation

pytestmark = [pytest.mark.systemd, pytest.mark.realgateway, pytest.mark.timeout(1800)]

PREFIX = "/opt/clawsvc/gateway"
CONFIG = "/etc/clawsvc/clawsvc.yaml"
UNIT_FILE = "/etc/systemd/system/clawsvc.service"
START_TIMEOUT = 600.0  # install or start to READY: ~7 s idle, minutes on a loaded 2-core machine


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, gateway_install: Installation) -> Iterator[Guest]:
    tmp = tmp_path_factory.mktemp("uninstall-guest")
    with booted_systemd(tmp, writable={farm(tmp, gateway_install): Path(PREFIX)}) as booted:
        yield booted
        print(f"--- clawsvc.service\n{booted.journal('clawsvc.service')[-3000:]}")  # shown when a test failed


def uninstall(guest: Guest, *args: str) -> tuple[int, str, str]:
    result = guest.run("clawsvc", "uninstall", "--system", *args, timeout=300)
    return result.returncode, result.stdout, result.stderr


def processes(guest: Guest) -> dict[int, str]:
    """Every process in the guest: pid -> command line."""
    listing = guest.run("sh", "-c", 'for p in /proc/[0-9]*; do printf "%s " "${p#/proc/}"; '
                                    "tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done", check=True).stdout
    found = {}
    for line in listing.splitlines():
        pid, _, cmdline = line.partition(" ")
        if cmdline.strip():
            found[int(pid)] = cmdline.strip()
    return found


def clawsvc_processes(guest: Guest) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes(guest).items()
            if "openclaw" in cmd or PREFIX in cmd or "clawsvc run" in cmd}


@pytest.fixture(scope="module")
def running(guest: Guest) -> dict[str, int]:
    """gateway-install, then `clawsvc install --system` (started here too if install only wrote it); the pids."""
    provisioned = guest.run("clawsvc", "gateway-install", timeout=300)
    assert provisioned.returncode == 0, provisioned.stderr
    installed = guest.run("clawsvc", "install", "--system", timeout=START_TIMEOUT)
    assert installed.returncode == 0, f"{installed.stdout}\n{installed.stderr}"
    if guest.show("clawsvc.service", "ActiveState")["ActiveState"] != "active":
        guest.systemctl("enable", "--now", "clawsvc.service", check=True, timeout=START_TIMEOUT)
    status = guest.run("clawsvc", "status", "--json", timeout=60)
    assert status.returncode == 0, status.stderr
    main_pid = int(guest.show("clawsvc.service", "MainPID")["MainPID"])
    return {"main": main_pid, "gateway": int(json.loads(status.stdout)["pid"])}


def test_uninstall_leaves_no_unit_and_no_gateway_process_and_keeps_state_and_config(guest, running):
    assert set(running.values()) <= set(clawsvc_processes(guest)), "the process check sees the running service"
    assert guest.path("/var/lib/clawsvc/openclaw").is_dir()

    code, out, err = uninstall(guest)
    assert (code, err) == (0, ""), out
    assert "stopped  clawsvc.service (disabled)" in out
    assert f"removed  {UNIT_FILE}" in out
    assert f"kept     {CONFIG} (--purge removes it)" in out
    assert not guest.path(UNIT_FILE).exists()
    assert not guest.path("/etc/systemd/system/clawsvc@.service").exists()
    assert not list(guest.path("/etc/systemd/system").glob("*.wants/clawsvc*"))
    status = guest.systemctl("status", "clawsvc.service")
    assert status.returncode == 4 and "could not be found" in status.stderr, (status.stdout, status.stderr)
    assert guest.show("clawsvc.service", "LoadState")["LoadState"] == "not-found"
    assert clawsvc_processes(guest) == {}, "KillMode=mixed and clawsvc's own stop leave no gateway behind"
    assert not set(running.values()) & set(processes(guest))

    assert any(guest.path("/var/lib/clawsvc/openclaw").iterdir()), "the gateway's state stays"
    assert guest.path(CONFIG).is_file()
    assert guest.run("id", "-u", "clawsvc").returncode == 0, "the service user stays"


def test_a_second_uninstall_has_nothing_to_remove(guest, running):
    code, out, err = uninstall(guest)
    assert (code, err) == (0, "")
    assert out.startswith("nothing to remove: clawsvc.service is not installed (kept ")
    assert out.count("\n") == 1


def test_purge_removes_config_state_cache_and_user_but_not_the_gateway_runtime(guest, running):
    code, out, err = uninstall(guest, "--purge")
    assert (code, err) == (0, ""), out
    for gone in (CONFIG, "/etc/clawsvc", "/var/lib/clawsvc", "/var/cache/clawsvc", "/etc/sysusers.d/clawsvc.conf"):
        assert not guest.path(gone).exists(), gone
    assert guest.run("id", "-u", "clawsvc").returncode != 0, "the service user went with the last unit"
    assert f"rm -rf {PREFIX}" in out
    assert guest.run("test", "-x", f"{PREFIX}/current/node").returncode == 0, "the shared gateway runtime stays"

    code, out, _ = uninstall(guest, "--purge")
    assert (code, out) == (0, "nothing to remove: clawsvc.service is not installed\n")
