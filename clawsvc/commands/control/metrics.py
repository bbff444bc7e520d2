"""`clawsvc metrics`: the running service's Prometheus metrics (text format), as GET /metrics serves them."""

from __future__ import annotations

import argparse
import sys

from clawsvc import exitcodes
from clawsvc.commands.control.client import STATUS_TIMEOUT, ask, fail, target


def main(args: argparse.Namespace) -> int:
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    code, result = ask(found.socket, {"cmd": "metrics"}, STATUS_TIMEOUT)
    if code != exitcodes.OK:
        return code
    if not isinstance(result, str):
        fail(f"clawsvc at {found.socket} sent metrics this client cannot use (not text)")
        return exitcodes.FAIL
    sys.stdout.write(result)
    return exitcodes.OK
