"""How a gateway process ended, as one value the waiter reports and the state machine reads."""

from __future__ import annotations

import signal
from dataclasses import dataclass


@dataclass(frozen=True)
class ExitInfo:
    returncode: int | None  # exit status, None if killed by a signal (or never started)
    signal: int | None  # signal number if killed by one
    forced: bool = False  # True when stop() had to SIGKILL

    @classmethod
    def from_returncode(cls, returncode: int, forced: bool = False) -> ExitInfo:
        if returncode < 0:
            return cls(None, -returncode, forced)
        return cls(returncode, None, forced)

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            text = f"killed by {name}"
        elif self.returncode is not None:
            text = f"exited with status {self.returncode}"
        else:
            return "did not exit even after SIGKILL" if self.forced else "never started"
        return text + " (forced: it did not stop within stop_timeout)" if self.forced else text
