"""`clawsvc status`: the running service's state, as `systemctl status` shows a unit's."""

from __future__ import annotations

import argparse
import json
import time

from clawsvc import exitcodes
from clawsvc.commands.control.client import STATUS_TIMEOUT, ask, fail, target
from clawsvc.commands.servicectl import start_refused
from clawsvc.config.instances import unit_name
from clawsvc.service.status import REPLIED, BadSnapshot, Snapshot, State, status_block


def status_main(args: argparse.Namespace) -> int:
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    code, reply = ask(found.socket, {"cmd": "status"}, STATUS_TIMEOUT, refused_exit=exitcodes.NOT_RUNNING)
    if code == exitcodes.NOT_RUNNING and (refused := start_refused(unit_name(getattr(args, "instance", None)))):
        fail(refused)
    if code != exitcodes.OK:
        return code
    try:
        snap = Snapshot.from_dict(reply)
    except BadSnapshot as exc:
        fail(f"clawsvc at {found.socket} sent a status reply this client cannot use: {exc}")
        return exitcodes.FAIL
    if args.json:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    else:
        print(status_block(snap, found.socket, REPLIED, time.time()))
    return exitcodes.OK if snap.state is State.RUNNING else exitcodes.NOT_RUNNING
