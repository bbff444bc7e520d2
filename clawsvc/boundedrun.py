"""A short helper program (`node --version`, a check run as the service user, an alert hook) run with bounds:
stdin /dev/null or a small input (at most a pipe's buffer, written without blocking), a clean environment given by
the caller, cwd /, stdout and stderr in one pipe of which at most `cap` bytes are taken, and its process group
killed at the deadline or as soon as it prints more. Optionally as another account: its uid, its primary gid and no
supplementary groups, so it can do no more than that user could."""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clawsvc


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int

    @classmethod
    def of(cls, uid: int) -> Account:
        """The uid with its primary group; KeyError for a uid without a passwd entry."""
        return cls(uid, pwd.getpwuid(uid).pw_gid)


@dataclass(frozen=True)
class Finished:
    returncode: int
    output: bytes  # stdout and stderr as they came, at most `cap` bytes


class Unfinished(Exception):
    """The program could not start, outran its deadline or printed more than it may; str() is one line."""


def clawsvc_module(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """(argv, env) that run `python -m module ARGS` of this very clawsvc with nothing of the caller's: a PATH, a
    locale, and where this clawsvc is installed (for a child run as another account, see as_account)."""
    env = {"PATH": os.environ.get("PATH") or os.defpath, "LANG": "C.UTF-8",
           "PYTHONPATH": str(Path(clawsvc.__file__).resolve().parent.parent)}
    return [sys.executable, "-P", "-m", module, *args], env


def as_account(argv: Sequence[str], account: Account | None) -> tuple[list[str], dict[str, Any]]:
    """(argv, Popen's arguments) that run argv as `account`: through setpriv (util-linux), which also kills it
    with its parent, and without it through Popen's own user=, group=, extra_groups=[]."""
    if account is None:
        return list(argv), {}
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(argv), {"user": account.uid, "group": account.gid, "extra_groups": []}
    return [setpriv, "--reuid", str(account.uid), "--regid", str(account.gid), "--clear-groups", "--pdeathsig",
            "KILL", "--", *argv], {}


STDIN_MAX = 64 * 1024  # a fresh pipe takes this much without a reader: writing it never waits on the program


def run_bounded(argv: Sequence[str], *, env: Mapping[str, str], timeout: float, cap: int,
                account: Account | None = None, stdin: bytes | None = None) -> Finished:
    """Run argv to its end within `timeout` seconds, keeping at most `cap` bytes of its output; `stdin` (at most
    STDIN_MAX bytes) is what it reads, then end of file."""
    if stdin is not None and len(stdin) > STDIN_MAX:
        raise ValueError(f"run_bounded takes at most {STDIN_MAX} bytes of input, got {len(stdin)}")
    command, switch = as_account(argv, account)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env), cwd="/",
                                 start_new_session=True, **switch)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unfinished(f"cannot run {argv[0]}: {getattr(exc, 'strerror', None) or exc}") from None
    if child.stdin is not None:
        _feed(child.stdin.fileno(), stdin or b"")
        child.stdin.close()
    deadline = time.monotonic() + timeout
    try:
        assert child.stdout is not None
        output = _read(child.stdout.fileno(), deadline, cap)
        if output is None:
            raise Unfinished(f"{argv[0]} printed more than {cap} bytes; stopped it")
        returncode = child.wait(max(0.0, deadline - time.monotonic()))
    except (TimeoutError, subprocess.TimeoutExpired):
        raise Unfinished(f"{argv[0]} did not finish within {timeout:g}s; stopped it") from None
    finally:
        if child.returncode is None:  # not reaped: its pid is still its group's id, ours to kill
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    return Finished(returncode, output)


def _feed(fd: int, data: bytes) -> None:
    """All of `data` into the empty pipe at once; a program that exits without reading it is no error."""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, data)


def _read(fd: int, deadline: float, cap: int) -> bytes | None:
    """Everything up to EOF; None past `cap` bytes; TimeoutError at the deadline."""
    taken = bytearray()
    waiting = select.poll()  # not select(): a service's descriptor numbers may pass FD_SETSIZE
    waiting.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        if not waiting.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return bytes(taken)
        taken += chunk
        if len(taken) > cap:
            return None
