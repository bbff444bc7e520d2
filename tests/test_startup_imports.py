"""What `clawsvc run` has loaded and started by the time it spawns the gateway, without a stopwatch.

A real `clawsvc run` runs under an audit hook that writes down, at the Popen of the gateway, which modules are
loaded and which children were started before it. What the spawn does not need (the WebSocket, HTTP and retrying
stacks, the keyring child where no keyring backend can exist) must come after; an eager import re-added anywhere
on the path fails here. bench/ownstart.py measures the time itself.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from double import python
from waiting import poll, terminate

from clawsvc.secrets import keyring_client

# loaded only once the first handshake (or a second restart in a row) needs them
LATER = ("websocket", "tenacity", "http.client", "email", "ssl", "importlib.metadata", "keyring",
         "clawsvc.gateway.connection", "clawsvc.gateway.readiness")
KEYRING_CHILD = "clawsvc.secrets.keyring_child"
HEADLESS_DROP = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
                 "PYTHON_KEYRING_BACKEND", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC")

# Runs `clawsvc run -c CONFIG` as the console script would; argv: OUT CONFIG GATEWAY_SCRIPT. Records argv only
# (the token travels in the environment, which is never written).
RECORDER = """
import json, os, sys
out, config, gateway = sys.argv[1:4]
started = []

def hook(event, args):
    if event != "subprocess.Popen":
        return
    argv = [str(arg) for arg in args[1]]
    if gateway not in argv:
        started.append(argv)
        return
    with open(out + ".tmp", "w") as file:
        json.dump({"modules": sorted(sys.modules), "started": started}, file)
    os.rename(out + ".tmp", out)

sys.addaudithook(hook)
from clawsvc.cli import main
sys.exit(main(["run", "-c", config]))
"""
GATEWAY = "import signal\nsignal.pause()\n"  # never listens: clawsvc keeps waiting for its hello-ok


def at_spawn(tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """Start the recorder, wait for the gateway's Popen, stop clawsvc; what was loaded and started by then."""
    gateway = tmp_path / "gateway.py"
    gateway.write_text(GATEWAY)
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER)
    config = tmp_path / "clawsvc.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"command": [python(), str(gateway)], "port": free_port(),
                    "state_dir": str(tmp_path / "state"), "stop_timeout": "5s", "start_timeout": "120s"},
        "control": {"socket": str(tmp_path / "control.sock")},
    }))
    out = tmp_path / "at-spawn.json"
    with open(tmp_path / "clawsvc.log", "wb") as log:
        popen = subprocess.Popen([sys.executable, str(recorder), str(out), str(config), str(gateway)], env=env,
                                 cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        poll(lambda: out.exists() or popen.poll() is not None, 60, "the gateway's spawn")
    finally:
        code = terminate(popen, 60, group=True)
    assert out.exists(), f"no gateway spawned (clawsvc exit {code}):\n{(tmp_path / 'clawsvc.log').read_text()}"
    # SIGTERM came at the spawn: the gateway is still stopped, then clawsvc exits 0
    assert code == 0, (tmp_path / "clawsvc.log").read_text()
    assert running(str(gateway)) == [], "the first gateway outlived clawsvc"
    found: dict[str, Any] = json.loads(out.read_text())
    return found


def running(word: str) -> list[int]:
    """Pids of live (not zombie) processes with `word` in their argv."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if word.encode() in argv and state != "Z":
            found.append(int(proc.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def headless(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A server's environment: no desktop session, no D-Bus, no keyring configured, a HOME of its own."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in HEADLESS_DROP}
    return {**env, "HOME": str(home), **extra}


def loaded_too_early(modules: list[str]) -> list[str]:
    return [name for name in modules if name.split(".")[0] in LATER or name in LATER
            or any(name.startswith(later + ".") for later in LATER)]


def test_the_gateway_is_spawned_before_the_connection_stack_and_without_a_keyring_child(tmp_path: Path) -> None:
    found = at_spawn(tmp_path, headless(tmp_path))
    assert "clawsvc.gateway.process" in found["modules"], "the hook did not see the spawn path"
    assert loaded_too_early(found["modules"]) == []
    assert [argv for argv in found["started"] if KEYRING_CHILD in argv] == [], found["started"]


def test_a_keyring_backend_chosen_by_the_admin_is_still_asked_before_the_spawn(tmp_path: Path) -> None:
    found = at_spawn(tmp_path, headless(tmp_path, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring"))
    assert [argv[-1] for argv in found["started"] if KEYRING_CHILD in argv] == [KEYRING_CHILD]
    assert loaded_too_early(found["modules"]) == [], "the keyring runs in its child, never in clawsvc"


# ------------------------------------------------------------------ when the keyring can have no backend


def test_no_backend_on_linux_without_a_session_bus_or_a_chosen_backend(tmp_path: Path) -> None:
    assert keyring_client.no_backend_here({"HOME": str(tmp_path)}) is not None


@pytest.mark.parametrize("env", [
    {"PYTHON_KEYRING_BACKEND": "keyring_file_backend.FileKeyring"},
    {"DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/1000/bus"},
    {"DISPLAY": ":0"},
], ids=["chosen", "session-bus", "display"])
def test_a_backend_may_exist(tmp_path: Path, env: dict[str, str]) -> None:
    assert keyring_client.no_backend_here({"HOME": str(tmp_path), **env}) is None


def test_a_session_bus_socket_or_a_keyringrc_means_asking(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir()
    assert keyring_client.no_backend_here({"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime)}) is not None
    (runtime / "bus").touch()
    assert keyring_client.no_backend_here({"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime)}) is None
    rc = tmp_path / ".config" / "python_keyring" / "keyringrc.cfg"
    rc.parent.mkdir(parents=True)
    rc.write_text("[backend]\ndefault-keyring=keyrings.alt.file.PlaintextKeyring\n")
    assert keyring_client.no_backend_here({"HOME": str(tmp_path)}) is None
    assert keyring_client.no_backend_here({"HOME": str(tmp_path / "elsewhere")}) is not None


def test_a_backend_installed_by_another_package_means_asking(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "site" / "keyrings.alt-5.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "entry_points.txt").write_text("[console_scripts]\nx = y:z\n\n[keyring.backends]\n"
                                           "file = keyrings.alt.file\n")
    assert keyring_client.no_backend_here({"HOME": str(tmp_path)}) is not None
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert keyring_client.no_backend_here({"HOME": str(tmp_path)}) is None
