"""Every thread clawsvc starts comes from start_thread: named clawsvc-<role>, a daemon, tracked until it ends,
and joined (with a bound) by join_all when the service stops."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_live: set[threading.Thread] = set()
_lock = threading.Lock()


def start_thread(role: str, target: Callable[..., object], *args: object) -> threading.Thread:
    thread = threading.Thread(target=_run, args=(target, args), name=f"clawsvc-{role}", daemon=True)
    with _lock:
        _live.add(thread)
    try:
        thread.start()
    except RuntimeError:  # "can't start new thread": never started, so nothing to join either
        with _lock:
            _live.discard(thread)
        raise
    return thread


def _run(target: Callable[..., object], args: tuple[object, ...]) -> None:
    try:
        target(*args)
    finally:
        with _lock:
            _live.discard(threading.current_thread())


def live() -> list[threading.Thread]:
    with _lock:
        return list(_live)


def join_all(timeout: float) -> list[str]:
    """Wait up to `timeout` seconds in all for the tracked threads; the names of those still running."""
    end = time.monotonic() + timeout
    for thread in live():
        if thread is not threading.current_thread():
            thread.join(max(0.0, end - time.monotonic()))
    return sorted(thread.name for thread in live() if thread.is_alive())
