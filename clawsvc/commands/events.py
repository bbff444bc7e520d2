"""`clawsvc events [--follow] [--json] [--name NAME ...]`: the service's events and the gateway's, over the
control socket. Readable lines by default, the JSON objects as they come with --json."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from clawsvc import exitcodes
from clawsvc.commands.control import STATUS_TIMEOUT, ask, fail, target
from clawsvc.control.client import ClientRefusal, follow
from clawsvc.control.wire import ControlError, ServiceNotRunning
from clawsvc.text import cut, printable

PAYLOAD_SHOWN = 200  # characters of a payload on a readable line


def _state(p: dict[str, Any]) -> str:
    return f"{p['from']} -> {p['to']}" + (f" ({p['cause']})" if p.get("cause") else "")


def _restart(p: dict[str, Any]) -> str:
    return f"in {p['delay']:.1f}s (attempt {p['attempt']}): {p['reason']}"


def _reload(p: dict[str, Any]) -> str:
    if not p["ok"]:
        return f"failed: {p['error']}"
    return f"ok; {', '.join(p['changed'])} changed" if p.get("changed") else "ok"


SERVICE_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "state": _state,
    "gateway.spawned": lambda p: f"pid {p['pid']}",
    "gateway.exited": lambda p: f"pid {p['pid']} {p['status']}",
    "restart": _restart,
    "restart.requested": lambda p: str(p["reason"]),
    "health.failed": lambda p: f"{p['failures']}/{p['limit']}: {p['error']}",
    "reload": _reload,
    "ready": lambda p: f"gateway version {p['version']}" + (f", pid {p['pid']}" if p.get("pid") else " (adopted)"),
    "error": lambda p: f"{p['error']} (exit {p['exit_code']})",
    "missed": lambda p: f"{p['count']} event(s) this consumer did not take in time",
    "dropped": lambda p: str(p["reason"]),
}


def readable(event: dict[str, Any]) -> str:
    """2026-11-28T21:00:00.123Z service state: starting -> running (...)  |  ... gateway chat {...}"""
    when, source, name = event.get("time", "?"), event.get("source", "?"), event.get("name", "?")
    payload = event.get("payload")
    text = SERVICE_TEXT.get(str(name)) if source == "service" else None
    if text is not None:
        try:
            return printable(f"{when} {source} {name}: {text(payload)}")
        except (KeyError, TypeError, ValueError):
            pass  # a payload of another clawsvc version: shown as it is
    shown = cut(json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str), PAYLOAD_SHOWN)
    return printable(f"{when} {source} {name} {shown}")


def _print(lines: Iterable[Any], as_json: bool) -> None:
    for event in lines:
        if not isinstance(event, dict):
            continue
        print(json.dumps(event, ensure_ascii=False) if as_json else readable(event), flush=True)


def _parsed(raw: Iterable[bytes]) -> Iterable[Any]:
    for line in raw:
        try:
            yield json.loads(line)
        except (ValueError, RecursionError):
            continue


def _request(args: argparse.Namespace) -> dict[str, Any]:
    return {"cmd": "events", "follow": bool(args.follow), "names": sorted(set(args.names)) if args.names else None}


def _follow(args: argparse.Namespace, path: Path) -> int:
    try:
        _print(_parsed(follow(path, _request(args), STATUS_TIMEOUT)), args.json)
        fail("the event stream ended (clawsvc stopped or closed its control socket)")
    except ServiceNotRunning as exc:
        fail(f"{exc}; is the service started? (systemctl status clawsvc)")
        return exitcodes.NOT_RUNNING
    except ControlError as exc:
        fail(f"{exc.code}: {exc.message}")
        gone = exc.code in ("DISCONNECTED", "TIMEOUT", "UNREACHABLE") and not isinstance(exc, ClientRefusal)
        return exitcodes.NOT_RUNNING if gone else exitcodes.FAIL
    return exitcodes.OK


def main(args: argparse.Namespace) -> int:
    """Exit 0 (also on Ctrl-C or when the reader of stdout goes away), 3 not running, 1 refused."""
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    try:
        if args.follow:
            return _follow(args, found.socket)
        code, result = ask(found.socket, _request(args), STATUS_TIMEOUT, refused_exit=exitcodes.FAIL)
        if code == exitcodes.OK:
            _print(result if isinstance(result, list) else [], args.json)
        return code
    except KeyboardInterrupt:
        return exitcodes.OK
    except BrokenPipeError:  # `clawsvc events --follow | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush must not fail again
        return exitcodes.OK
