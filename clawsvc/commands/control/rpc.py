"""`clawsvc rpc METHOD [PARAMS_JSON|@FILE|-]`: one gateway RPC through the service's connection."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from clawsvc import exitcodes, trust
from clawsvc.commands.control.client import MARGIN, ask, fail, target
from clawsvc.control.wire import MAX_DEPTH, MAX_REQUEST, TIMEOUT_RULE, ControlError, rpc_timeout, too_deep


class _BadParams(Exception):
    """The rpc params argument cannot be used; the message names where they came from."""


def _too_large(where: str) -> _BadParams:
    return _BadParams(f"{where} is larger than {MAX_REQUEST} bytes, the most clawsvc takes in one request")


def _params_text(spec: str) -> tuple[str, bytes]:
    """(where, raw bytes) of PARAMS_JSON, @FILE or - (stdin); at most MAX_REQUEST bytes are read."""
    if spec == "-":
        where, raw = "params on stdin", _read_stdin("params on stdin")
    elif spec.startswith("@"):
        if not spec[1:]:
            raise _BadParams("@FILE needs a file name, e.g. @params.json")
        where = f"params file {spec[1:]}"
        raw = _read_file(where, spec[1:])
    else:
        where, raw = "PARAMS_JSON", spec.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_REQUEST:
        raise _too_large(where)
    return where, raw


def _read_stdin(where: str) -> bytes:
    """Up to MAX_REQUEST + 1 bytes of stdin (a pipe, a FIFO, /dev/zero: the caller chose to wait for it)."""
    try:
        return sys.stdin.buffer.read(MAX_REQUEST + 1)
    except (OSError, AttributeError) as exc:  # AttributeError: no stdin at all
        raise _BadParams(f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None


def _read_file(where: str, path: str) -> bytes:
    """A regular file of at most MAX_REQUEST bytes, opened without blocking: a FIFO or a device is refused at
    once (before it is opened), a file that is too big before it is read."""
    def vet(st: os.stat_result) -> None:
        if st.st_size > MAX_REQUEST:
            raise _too_large(where)

    try:
        return trust.read_regular(path, "params file", cap=MAX_REQUEST, nofollow=False, vet=vet).data
    except trust.TrustError as exc:
        raise _BadParams(str(exc)) from None
    except OSError as exc:
        raise _BadParams(f"cannot read {where}: {exc.strerror or exc}") from None


def read_params(spec: str | None) -> Any:
    """The params of `clawsvc rpc`, parsed; _BadParams with one line if they are unusable."""
    if spec is None:
        return None
    where, raw = _params_text(spec)
    if too_deep(raw):
        raise _BadParams(f"{where} nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _BadParams(f"{where} is not valid JSON: {exc}") from None


def rpc_main(args: argparse.Namespace) -> int:
    try:
        params = read_params(args.params)
    except _BadParams as exc:
        fail(str(exc))
        return exitcodes.USAGE
    try:
        rpc_timeout(args.timeout)
    except ControlError:
        fail(f"--timeout must be {TIMEOUT_RULE}")
        return exitcodes.USAGE
    found = target(args)
    if found is None:
        return exitcodes.CONFIG
    message = {"cmd": "rpc", "method": args.method, "params": params, "timeout": args.timeout}
    code, result = ask(found.socket, message, (args.timeout or found.request_timeout) + MARGIN)
    if code == exitcodes.OK:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    return code
