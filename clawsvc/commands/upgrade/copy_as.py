"""The canary's state copy made as the service's account, for root upgrading a system service.

The live state dir belongs to that account, which a compromised gateway runs as: between the copy's walk and its
reads it can swap a dir of the state for a symlink to, say, /root/.ssh. O_NOFOLLOW guards only a path's last
component, so root copying would read through it and hand the copy to that account. So root runs the copy in a
child, `python -m clawsvc.commands.upgrade.copy_as SOURCE DEST MAX_BYTES MAX_FILES` through setpriv as the account: it
reads only what the account may read and writes only into DEST, which the account owns. The child prints one
JSON line (the counts and the warnings) on stdout, or one error line on stderr and exits 1. The parent bounds it
with COPY_TIMEOUT and kills it on any exception (Ctrl-C included).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from clawsvc import users
from clawsvc.boundedrun import Account, as_account, clawsvc_module
from clawsvc.commands.upgrade.statecopy import Copied, Limits, StateCopyError, copy_state

COPY_TIMEOUT = 600.0  # MAX_BYTES (2 GiB) of state copies in well under that on any disk clawsvc runs on
OUTPUT_CAP = 1024 ** 2  # the most of the child's stdout or stderr we parse
ERROR_LINE_CAP = 500
DEFAULT_LIMITS = Limits()


def copy_state_as(uid: int, gid: int, source: Path, dest: Path, limits: Limits = DEFAULT_LIMITS,
                  warn: Callable[[str], None] = lambda _line: None, timeout: float = COPY_TIMEOUT) -> Copied:
    """canary_state.copy_state(source, dest) run by uid:gid (and no supplementary groups) in a child process; dest
    must exist, empty, owned by uid. StateCopyError (one line) when the copy fails or takes over `timeout`."""
    module, env = clawsvc_module(__name__, str(source.absolute()), str(dest.absolute()), str(limits.max_bytes),
                                 str(limits.max_files))
    argv, switch = as_account(module, Account(uid, gid))
    who = users.describe_uid(uid)
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 cwd="/", env=env, start_new_session=True, **switch)
    except OSError as exc:
        raise StateCopyError(f"cannot start the canary's state copy as {who}: {exc.strerror}; check that "
                             "setpriv (util-linux) is installed") from None
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StateCopyError(f"copying {source} for the canary as {who} took over {timeout:g}s and was stopped; "
                             "upgrade with the service stopped, or clean up its state") from None
    finally:
        if child.returncode is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise StateCopyError(_failure(child.returncode, err[:OUTPUT_CAP], source, who))
    return _result(out[:OUTPUT_CAP], warn, who)


def _failure(code: int, err: bytes, source: Path, who: str) -> str:
    lines = err.decode("utf-8", errors="replace").strip().splitlines()
    if code < 0:
        return f"the canary's copy of {source} as {who} was killed by signal {-code}; try the upgrade again"
    if not lines:
        return f"the canary's copy of {source} as {who} failed (exit {code}) without a word; try the upgrade again"
    return lines[-1][:ERROR_LINE_CAP]


def _result(out: bytes, warn: Callable[[str], None], who: str) -> Copied:
    try:
        found = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        copied = Copied(int(found["files"]), int(found["databases"]), int(found["bytes"]))
        warnings = [str(line) for line in found["warnings"]]
    except (ValueError, KeyError, TypeError, IndexError):
        raise StateCopyError(f"the canary's state copy as {who} answered no result; try the upgrade again") from None
    for line in warnings:
        warn(line)
    return copied


def main(argv: Sequence[str]) -> int:
    """The child: SOURCE DEST MAX_BYTES MAX_FILES; 0 and one JSON line, or 1 and one error line."""
    try:
        source, dest, max_bytes, max_files = argv
        limits = Limits(int(max_bytes), int(max_files))
    except ValueError:
        print(f"usage: python -m {__name__} SOURCE DEST MAX_BYTES MAX_FILES", file=sys.stderr)
        return 1
    warnings: list[str] = []
    try:
        copied = copy_state(Path(source), Path(dest), limits, warnings.append)
    except StateCopyError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot copy {source} into {dest} for the canary: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps({**dataclasses.asdict(copied), "warnings": warnings}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
