"""Waiting for a condition in tests: poll with a deadline, never a bare sleep standing in for synchronisation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(condition: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Call condition until it returns something truthy; AssertionError naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(every)
