"""Text for messages: an error line or a status quotes at most a few dozen characters of a value, however big
the value is, and nothing another process chose (a process name, a gateway's error text) reaches a terminal or a
STATUS= line as control characters."""

from __future__ import annotations

import re
import reprlib
from typing import Any

SHOWN = 60  # characters of a value a message quotes
ELLIPSIS = "…"
_LARGE_INT_BITS = 120  # about 36 digits: repr() of much larger ints costs time or raises ValueError
_CONTROL = re.compile(r"\s*[\x00-\x1f\x7f-\x9f]+\s*")  # C0, DEL and C1 (the 8-bit CSI is in C1)


def printable(text: str) -> str:
    """One line without control characters: runs of them (and the blanks around them) become one space."""
    return _CONTROL.sub(" ", text).strip()


def cut(text: str, limit: int = SHOWN) -> str:
    """`text`, or its first `limit` characters and "…" when it is longer."""
    return text if len(text) <= limit else text[:limit] + ELLIPSIS


def shown(value: Any, limit: int = SHOWN) -> str:
    """repr() of a value for a message, cut to about `limit` characters without building a huge repr first."""
    if isinstance(value, int) and value.bit_length() > _LARGE_INT_BITS:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else repr(value[:limit]) + ELLIPSIS
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = limit + 2
    short.maxlevel, short.maxlist, short.maxdict = 2, 4, 4
    return cut(short.repr(value), limit)
