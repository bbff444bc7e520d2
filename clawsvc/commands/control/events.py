"""`clawsvc events [--follow] [--json] [--name NAME ...]`: the service's events and the gateway's, over the
control socket. Readable lines by default, the JSON objects as they come with --json."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clawsvc import exitcodes
from clawsvc.commands.control.client import STATUS_TIMEOUT, ask, fail, target
from clawsvc.control.client import ClientRefusal, follow
from clawsvc.control.wire import ControlError, ServiceNotRunning
from clawsvc.service import catalogue
from clawsvc.text import cut, printable

PAYLOAD_SHOWN = 200  # characters of a payload on a readable line


def readable(event: dict[str, Any]) -> str:
    """2026-11-28T21:00:00.123Z service state: starting -> running (...)  |  ... gateway chat {...}"""
    when, source, name = event.get("time", "?"), event.get("source", "?"), event.get("name", "?")
    payload = event.get("payload")
    text = catalogue.text(str(name), payload) if source == "service" else None
    if text is not None:
        return printable(f"{when} {source} {name}: {text}")
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


def print_names() -> int:
    """`clawsvc events --names`: the catalogue, without asking the service."""
    rows = catalogue.names()
    width = max(len(name) for _, name, _ in rows)
    for source, name, description in rows:
        print(f"{name:<{width}}  {source:<7}  {description}")
    return exitcodes.OK


def main(args: argparse.Namespace) -> int:
    """Exit 0 (also on Ctrl-C or when the reader of stdout goes away), 3 not running, 1 refused."""
    if args.list_names:
        return print_names()
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
