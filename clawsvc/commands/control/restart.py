"""`clawsvc restart-gateway [--force]`: the gateway's own safe restart, or one at once."""

from __future__ import annotations

import argparse

from clawsvc import exitcodes
from clawsvc.commands.control.client import MARGIN, STATUS_TIMEOUT, ask, target

RESTARTING = {
    "safe": "the gateway restarts itself (same process) as soon as its active work is done",
    "fresh": "the gateway finishes its active work, then a new one is started",
    "force": "the gateway is stopped now (SIGKILL after 10s) and a new one started; work in flight is cut off",
}


def restart_main(args: argparse.Namespace) -> int:
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    mode = "force" if args.force else "safe"
    code, result = ask(found.socket, {"cmd": "restart-gateway", "mode": mode}, STATUS_TIMEOUT + MARGIN)
    if code == exitcodes.OK:
        done = result.get("mode") if isinstance(result, dict) else None
        print(f"{RESTARTING.get(str(done), 'gateway restart requested')}; follow it with: clawsvc status")
    return code
