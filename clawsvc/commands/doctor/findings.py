"""What one doctor check found: a level and one line for the admin (redacted on the way out)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from clawsvc.logs import redact


class Level(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str
    text: str

    def line(self) -> str:
        return f"{self.level.value:<4}  {self.topic}: {redact(self.text)}"
