"""Runs INSIDE the booted guest (python bench/guest_probe.py ACTION ...): one timed trial, one JSON line out.

Timing in the guest keeps the probe's clock, the unit's timestamps and the gateway on one CLOCK_MONOTONIC
and loopback. Every "usable" is a real protocol-4 handshake with the token ending in hello-ok from a gateway
whose bootId differs from the one serving before the trial (so a draining old process never counts).

    start   UNIT URL TOKEN_FILE               systemctl start --no-block → hello-ok; when the unit went active
    kill    UNIT URL TOKEN_FILE               SIGKILL of the serving gateway process → a new gateway's hello-ok
    restart UNIT URL TOKEN_FILE [--version V] systemctl restart --no-block → a new gateway's hello-ok (of V)
`--empty DIR` (repeatable) removes a compile-cache directory first (a cold start).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import realgw
import websocket

PROBE_EVERY = 0.020
TIMEOUT = 300.0
GATEWAY_TITLE = b"openclaw-gateway"  # the serving process sets this title (a compile-cache launcher does not)


def hello_once(url: str, token_file: Path) -> dict[str, Any] | None:
    """hello-ok's server block, or None while the gateway is not usable (refused, starting, closing)."""
    try:
        token = token_file.read_text().strip()
    except OSError:
        return None
    try:
        ws, hello = realgw.connect(url, token, timeout=10.0)
    except realgw.GatewayError as exc:
        if exc.code != "UNAVAILABLE" and not exc.retryable:
            raise
        return None
    except (OSError, websocket.WebSocketException):
        return None
    ws.close()
    return dict(hello.get("server") or {})


def wait_usable(url: str, token_file: Path, not_boot: str | None = None, version: str | None = None
                ) -> tuple[float, dict[str, Any]]:
    """(monotonic time of the first acceptable hello-ok, its server block)."""
    deadline = time.monotonic() + TIMEOUT
    pause = threading.Event()
    while time.monotonic() < deadline:
        server = hello_once(url, token_file)
        if server and server.get("bootId") != not_boot and (version is None or server.get("version") == version):
            return time.monotonic(), server
        pause.wait(PROBE_EVERY)
    raise TimeoutError(f"no hello-ok from {url} within {TIMEOUT:g}s")


def show(unit: str, prop: str) -> str:
    out = subprocess.run(["systemctl", "show", unit, f"--property={prop}", "--value"], capture_output=True,
                         text=True, check=True).stdout
    return out.strip()


def active_at(unit: str) -> float:
    """When the unit last entered ActiveState=active (waits for it, e.g. clawsvc's READY=1 after our hello)."""
    deadline = time.monotonic() + TIMEOUT
    pause = threading.Event()
    while show(unit, "ActiveState") != "active":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{unit} not active within {TIMEOUT:g}s")
        pause.wait(PROBE_EVERY)
    return int(show(unit, "ActiveEnterTimestampMonotonic")) / 1e6


def unit_pids(unit: str) -> list[int]:
    root = Path("/sys/fs/cgroup") / show(unit, "ControlGroup").lstrip("/")
    return [int(pid) for procs in root.rglob("cgroup.procs") for pid in procs.read_text().split()]


def serving_pid(unit: str) -> int:
    """The gateway process that answers (title openclaw-gateway), whatever launcher or supervisor is above it."""
    for pid in unit_pids(unit):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(GATEWAY_TITLE):
                return pid
        except OSError:
            continue
    raise RuntimeError(f"no {GATEWAY_TITLE.decode()} process in {unit}")


def gateway_env(unit: str) -> dict[str, str]:
    raw = Path(f"/proc/{serving_pid(unit)}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def empty(directories: list[str]) -> None:
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


def trial_start(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    subprocess.run(["systemctl", "start", "--no-block", args.unit], check=True)
    usable, server = wait_usable(args.url, Path(args.token_file))
    active = active_at(args.unit)
    env = gateway_env(args.unit)
    return {"usable": usable - t0, "active": active - t0, "version": server.get("version"),
            "compile_cache": env.get("NODE_COMPILE_CACHE"), "tmpdir": env.get("TMPDIR")}


def trial_kill(args: argparse.Namespace) -> dict[str, Any]:
    _, before = wait_usable(args.url, Path(args.token_file))
    victim = serving_pid(args.unit)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    usable, _ = wait_usable(args.url, Path(args.token_file), not_boot=before.get("bootId"))
    return {"usable": usable - t0}


def trial_restart(args: argparse.Namespace) -> dict[str, Any]:
    _, before = wait_usable(args.url, Path(args.token_file))
    t0 = time.monotonic()
    subprocess.run(["systemctl", "restart", "--no-block", args.unit], check=True)
    usable, server = wait_usable(args.url, Path(args.token_file), not_boot=before.get("bootId"), version=args.version)
    exec_at = int(show(args.unit, "ExecMainStartTimestampMonotonic")) / 1e6
    return {"usable": usable - t0, "version": server.get("version"), "new_exec_to_usable": usable - exec_at}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="guest_probe")
    parser.add_argument("action", choices=("start", "kill", "restart"))
    parser.add_argument("unit")
    parser.add_argument("url")
    parser.add_argument("token_file")
    parser.add_argument("--empty", action="append", default=[], help="remove this directory before the start")
    parser.add_argument("--version", help="restart: wait for hello-ok from this gateway version")
    args = parser.parse_args(argv)
    trial = {"start": trial_start, "kill": trial_kill, "restart": trial_restart}[args.action]
    empty(args.empty)
    print(json.dumps(trial(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
