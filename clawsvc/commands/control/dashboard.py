"""`clawsvc dashboard`: a Control UI link that logs in, asked of the running service (which has the gateway make a
single-use owner link: clawsvc.gateway.dashboard), and the `ssh -L` line that brings the gateway's port to another
machine. The shared gateway token is never printed: the link pairs the one browser that opens it."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
from datetime import datetime
from typing import Any

from clawsvc import exitcodes
from clawsvc.commands.control.client import MARGIN, ask, fail, target
from clawsvc.commands.servicectl import start_refused
from clawsvc.config.instances import unit_name
from clawsvc.gateway.dashboard import TIMEOUT


def ssh_line(port: int) -> str:
    """What to run on a laptop so that the link (on 127.0.0.1:PORT) reaches this machine's gateway."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return f"ssh -N -L {port}:127.0.0.1:{port} {user}@{socket.gethostname()}"


def _expiry(ms: Any) -> str:
    if not isinstance(ms, int):
        return "soon"
    return datetime.fromtimestamp(ms / 1000).astimezone().strftime("%H:%M:%S %Z")


def render(link: dict[str, Any]) -> str:
    port = link.get("port")
    lines = [f"Control UI: open this link once, within its time (until {_expiry(link.get('expiresAtMs'))}); it "
             "logs that browser in as the gateway's owner:", f"  {link['url']}"]
    if isinstance(port, int):
        lines += ["From another machine, forward the port first, then open the link there:", f"  {ssh_line(port)}"]
    lines.append("Later visits: " + (link.get("httpUrl") or "the same address, without the part after #")
                 + " (a new link: clawsvc dashboard)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    code, reply = ask(found.socket, {"cmd": "dashboard"}, TIMEOUT + MARGIN)
    if code == exitcodes.NOT_RUNNING and (refused := start_refused(unit_name(getattr(args, "instance", None)))):
        fail(refused)
    if code != exitcodes.OK:
        return code
    if not isinstance(reply, dict) or not isinstance(reply.get("url"), str):
        fail(f"clawsvc at {found.socket} sent a dashboard reply this client cannot use")
        return exitcodes.FAIL
    if args.json:
        port = reply.get("port")
        print(json.dumps({**reply, "ssh": ssh_line(port) if isinstance(port, int) else None}))
    else:
        print(render(reply))
    return exitcodes.OK
