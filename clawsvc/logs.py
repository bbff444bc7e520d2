"""Logging for journald and terminals: <N> priority prefixes under the journal, secrets redacted everywhere."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
LEVEL_NAMES = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR, "critical": logging.CRITICAL}
MASK = "***"

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Every later log line has this value masked (values shorter than 6 characters are not secrets)."""
    if value and len(value) >= 6:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def longest_secret() -> int:
    """UTF-8 length of the longest secret: how far past a cut a secret that starts before it can reach."""
    with _secrets_lock:
        return max((len(secret.encode()) for secret in _secrets), default=0)


def secret_safe_cut(data: bytes, limit: int) -> int:
    """The largest cut <= limit that splits no secret in data: data[:cut] then holds only whole secrets, which
    redact() masks. data must reach longest_secret() bytes past limit for a secret there to be seen whole."""
    with _secrets_lock:
        secrets = [secret.encode() for secret in _secrets]
    cut, moved = limit, True
    while moved:
        moved = False
        for secret in secrets:  # a match inside this window starts before the cut and ends after it
            start = data.find(secret, max(0, cut - len(secret) + 1), cut + len(secret) - 1)
            if start != -1:
                cut, moved = start, True
    return cut


def priority(levelno: int) -> int:
    """syslog priority for a logging level (levels between the named ones round down in severity)."""
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return PRIORITY[level]
    return PRIORITY[logging.DEBUG]


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when systemd connected our stderr to journald ($JOURNAL_STREAM is 'dev:inode' of it)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":", 1))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class RedactingFormatter(logging.Formatter):
    """Formats, then masks secrets; under the journal every physical line gets the <N> prefix."""

    def __init__(self, journal: bool) -> None:
        fmt = "%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        if not self.journal:
            return text
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def setup_logging(level: str = "info", stream: TextIO | None = None, journal: bool | None = None) -> None:
    """Configure the root logger once: one stderr handler, journald-aware."""
    stream = stream or sys.stderr
    if journal is None:
        journal = stderr_is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter(journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(LEVEL_NAMES[level])
