"""How a gateway process ended, as one value the waiter reports and the state machine reads."""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass


class ExitKind(enum.Enum):
    """Why the gateway says it could not run (from its last lines; gateway.notices.exit_cause)."""
    CONFIG = "config"    # its config (openclaw.json) is invalid or missing: final until someone fixes it
    SCHEMA = "schema"    # its databases were migrated by a newer build: final until upgraded or restored
    LOCKED = "locked"    # another gateway holds the state dir's lock: may clear
    PORT = "port"        # another gateway listens on the port: may clear


@dataclass(frozen=True)
class ExitCause:
    kind: ExitKind
    text: str  # one line: what the gateway said, and the fix


@dataclass(frozen=True)
class ExitInfo:
    returncode: int | None  # exit status, None if killed by a signal (or never started)
    signal: int | None  # signal number if killed by one
    forced: bool = False  # True when stop() had to SIGKILL
    cause: ExitCause | None = None

    @classmethod
    def from_returncode(cls, returncode: int, forced: bool = False, cause: ExitCause | None = None) -> ExitInfo:
        if returncode < 0:
            return cls(None, -returncode, forced)
        return cls(returncode, None, forced, cause if returncode else None)

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
