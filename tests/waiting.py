"""Waiting for a condition in tests: poll with a deadline, never a bare sleep standing in for synchronisation.

A wait on a process under test also gives up as soon as that process has exited (`Gone`): the failure then names
its exit status and its last output lines at once, instead of after the whole timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Gone = Callable[[], str | None]  # None while the process waited on runs; else how it ended, for the failure
TAIL_LINES = 20


def exit_description(popen: subprocess.Popen[Any], name: str, output: Callable[[], str]) -> str | None:
    """None while `popen` runs; else "NAME exited with status N (or signal X); its last output lines: ..."."""
    code = popen.poll()
    if code is None:
        return None
    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"status {code}"
    tail = "\n".join(output().splitlines()[-TAIL_LINES:])
    return f"{name} (pid {popen.pid}) exited with {how}; its last output lines:\n{tail}"


def poll(condition: Callable[[], T], timeout: float, what: str, every: float = 0.05, gone: Gone | None = None) -> T:
    """Call condition until it returns something truthy; AssertionError naming `what` after timeout, or as soon as
    `gone` says the process it depends on has exited (after one last look: what it did before is all there)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        ended = gone() if gone is not None else None
        if ended is not None:
            value = condition()
            if value:
                return value
            raise AssertionError(f"gave up waiting for {what}: {ended}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(every)


def terminate(popen: subprocess.Popen[Any], grace: float, group: bool = False) -> int:
    """SIGTERM, `grace` seconds to exit, then SIGKILL (to its process group with `group`); its exit status."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            return popen.wait(grace)
        except subprocess.TimeoutExpired:
            if group:
                os.killpg(popen.pid, signal.SIGKILL)
            else:
                popen.kill()
    return popen.wait()
