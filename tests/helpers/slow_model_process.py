"""The slow model (slow_model.py) in a process of its own, for where the test's process cannot serve it: inside a
booted guest's network namespace (tests/systemd_guest.py), started through nsenter.

As a script:  python slow_model_process.py --reply TEXT --delay SECONDS [--chunks N]
prints {"port": N} once listening on 127.0.0.1, then one JSON line per call when it arrives ({"event": "arrived",
"call", "lastUserText"}) and when it ends ({"event": "ended", "call", "outcome", "seconds"}); it stops (ending
calls in flight) when its stdin closes.

From a test:
    with ModelProcess(guest.enter, GUEST_PYTHON, script_in_guest, "the reply", 25, env=GUEST_ENV) as m:
        ...  # the gateway's model at m.base_url
        call = m.arrived(1, timeout=120)[0]
        assert m.ended(call["call"], timeout=60)["outcome"] == "finished"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

REPORT_EVERY = 0.05  # seconds between looks at the model's calls


def _report(model: Any, told: dict[int, str | None]) -> None:
    for call in model.calls:
        if call.index not in told:
            print(json.dumps({"event": "arrived", "call": call.index, "lastUserText": call.last_user_text}),
                  flush=True)
            told[call.index] = None
        if call.outcome is not None and told[call.index] is None:
            seconds = round((call.ended or call.arrived) - call.arrived, 3)
            print(json.dumps({"event": "ended", "call": call.index, "outcome": call.outcome, "seconds": seconds}),
                  flush=True)
            told[call.index] = call.outcome


def main() -> None:
    from slow_model import SlowModel  # run as a script: this directory is on sys.path

    parser = argparse.ArgumentParser()
    parser.add_argument("--reply", required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--chunks", type=int, default=5)
    args = parser.parse_args()
    with SlowModel(reply=args.reply, delay=args.delay, chunks=args.chunks) as model:
        print(json.dumps({"port": model.port}), flush=True)
        closed = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), closed.set()), daemon=True).start()
        told: dict[int, str | None] = {}
        while not closed.wait(REPORT_EVERY):
            _report(model, told)
    _report(model, told)  # what close() ended


class ModelProcess:
    """The script above run as `prefix + [python, script, ...]`; its reports kept as they come."""

    def __init__(self, run: Callable[..., list[str]], python: str, script: str, reply: str, delay: float,
                 chunks: int = 5, env: Mapping[str, str] | None = None, timeout: float = 30.0) -> None:
        """`run(*argv)` is the argv that runs argv where the model must be (e.g. Guest.enter)."""
        argv = run(python, script, "--reply", reply, "--delay", str(delay), "--chunks", str(chunks))
        self.popen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                      start_new_session=True)
        self.reports: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="clawsvc-test-model-process", daemon=True)
        self._thread.start()
        try:
            self.port = int(self._wait(lambda: next((r["port"] for r in self.reports if "port" in r), None),
                                       timeout, "the model process to listen"))
        except BaseException:
            self.close()
            raise

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._changed:
                self.reports.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait(self, found: Callable[[], Any], timeout: float, what: str) -> Any:
        with self._changed:
            result = self._changed.wait_for(lambda: found() is not None or self.popen.poll() is not None, timeout)
            value = found()
        if value is None:
            state = f"it exited {self.popen.returncode}" if result and self.popen.poll() is not None else "timed out"
            raise AssertionError(f"no {what} ({state} after {timeout:g}s)")
        return value

    def calls(self, event: str) -> list[dict[str, Any]]:
        with self._changed:
            return [r for r in self.reports if r.get("event") == event]

    def arrived(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """The first `count` calls' arrival reports, once there are that many."""
        return self._wait(lambda: self.calls("arrived")[:count] if len(self.calls("arrived")) >= count else None,
                          timeout, f"{count} model call(s)")

    def ended(self, index: int, timeout: float) -> dict[str, Any]:
        return self._wait(lambda: next((r for r in self.calls("ended") if r["call"] == index), None), timeout,
                          f"end of model call {index}")

    def close(self) -> None:
        """Close its stdin (it ends its calls and exits); SIGKILL its group if it does not."""
        with contextlib.suppress(OSError):
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self._thread.join(5)

    def __enter__(self) -> ModelProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
