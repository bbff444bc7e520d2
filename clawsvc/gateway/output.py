"""Gateway stdout/stderr -> logging, one line at a time, at the line's own level when it names one."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from typing import IO

from clawsvc.config import LoggingConfig
from clawsvc.logs import LEVEL_NAMES, longest_secret, redact, secret_safe_cut
from clawsvc.threads import start_thread

log = logging.getLogger("clawsvc.gateway")

MAX_LINE = 64 * 1024
TRUNCATED = " [... line truncated at 64 KiB]"

_WORDS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "notice": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR, "err": logging.ERROR,
          "fatal": logging.CRITICAL, "critical": logging.CRITICAL, "crit": logging.CRITICAL}
_PINO = ((60, logging.CRITICAL), (50, logging.ERROR), (40, logging.WARNING), (30, logging.INFO))
_WORD = "|".join(sorted(_WORDS, key=len, reverse=True))
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?\s+")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SUBSYSTEM = r"(?:\[[^\]\s]{1,40}\]\s*)?"
_BRACKETED = re.compile(rf"^{_SUBSYSTEM}[\[(<]({_WORD})[\])>]", re.IGNORECASE)
_BARE = re.compile(rf"^{_SUBSYSTEM}({_WORD.upper()})\b:?")
_LOGFMT = re.compile(rf"(?:^|\s)level=\"?({_WORD})\b", re.IGNORECASE)
_NODE_WARNING = re.compile(r"^\(node:\d+\) \w*Warning\b")


def clean(raw: bytes) -> str:
    """Bytes -> one printable line: invalid UTF-8 replaced, colours dropped, control bytes escaped."""
    text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
    text = _ANSI.sub("", text)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _TIMESTAMP.sub("", text, count=1)  # journald stamps lines itself


def _json_level(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    value = record.get("level")
    if value is None and isinstance(record.get("_meta"), dict):
        value = record["_meta"].get("logLevelName")  # OpenClaw's consoleStyle json (tslog)
    if isinstance(value, str):
        return _WORDS.get(value.lower())
    if isinstance(value, int) and not isinstance(value, bool):
        return next((level for floor, level in _PINO if value >= floor), logging.DEBUG)
    return None


def line_level(line: str) -> int | None:
    """The level a gateway line states about itself, or None to use the stream's level."""
    if line.startswith("{"):
        return _json_level(line)
    match = _BRACKETED.match(line) or _BARE.match(line) or _LOGFMT.search(line)
    if match:
        return _WORDS[match.group(1).lower()]
    if _NODE_WARNING.match(line):
        return logging.WARNING
    return None


class OutputPump:
    """Reads one pipe of the gateway until EOF on its own thread and logs every line."""

    def __init__(self, stream: IO[bytes], name: str, settings: LoggingConfig,
                 observer: Callable[[str], None] | None = None) -> None:
        """`observer` sees every line, also those `logging.suppress` keeps out of the log."""
        self.stream = stream
        self.name = name
        self.observer = observer
        default = settings.gateway_stdout if name == "stdout" else settings.gateway_stderr
        self.level = LEVEL_NAMES[default]
        self.suppress = settings.suppress
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = start_thread(f"gw-{self.name}", self.run)

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        skipping = False  # inside the rest of a line already logged truncated
        try:
            with self.stream:
                # past the limit, as much as the longest secret: one that starts before the cut is seen whole
                while chunk := self.stream.readline(MAX_LINE + longest_secret()):
                    complete = chunk.endswith(b"\n")
                    if skipping:
                        skipping = not complete
                        continue
                    if len(chunk.rstrip(b"\r\n")) > MAX_LINE:
                        skipping = not complete
                        self.emit(clean(chunk[:secret_safe_cut(chunk, MAX_LINE)]) + TRUNCATED)
                    else:
                        self.emit(clean(chunk))
        except (OSError, ValueError) as exc:
            log.warning("stopped reading gateway %s: %s", self.name, exc)

    def emit(self, line: str) -> None:
        if not line.strip():
            return
        if self.observer is not None:
            self.observer(line)
        if any(pattern.search(line) for pattern in self.suppress):
            return
        level = line_level(line) or self.level
        log.log(level, "%s", redact(line), extra={"gateway_stream": self.name})
