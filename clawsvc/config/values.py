"""Value parsers for config keys: each takes the plain YAML value and returns the typed value or raises
ValueError (ItemError for one element of a list or mapping) with a message that reads well after "key: "."""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clawsvc.ownconfig import TOKEN_ENV as TOKEN_ENV
from clawsvc.text import shown

BINDS = ("loopback", "lan", "tailnet", "auto")
LEVELS = ("debug", "info", "warning", "error", "critical")
DAY = 86400.0  # no duration makes sense beyond a day; larger ones overflow timers or mean "never"
MAX_DIGITS = 30  # a number written with more digits is out of every range here
PATH_MAX = 4095  # bytes of a path, without the NUL (Linux PATH_MAX is 4096 with it)
SUN_PATH_MAX = 107  # bytes of a unix socket path, without the NUL (sun_path is 108 bytes)
ARG_MAX_STRLEN = 131071  # bytes of one argv or environment string, without the NUL (MAX_ARG_STRLEN)


class ItemError(ValueError):
    """A problem with one element of a list or mapping value; the error then points at that element's line.

    `item` is the list index or mapping key; `at_key` points at the mapping key itself (a bad name)
    rather than at its value.
    """

    def __init__(self, item: int | str, message: str, at_key: bool = False) -> None:
        super().__init__(message)
        self.item = item
        self.at_key = at_key


# Each parser takes the plain YAML value and returns the typed value or raises ValueError
# with a message that reads well after "key: ".

Parser = Callable[[Any], Any]
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _plain_text(value: str, what: str, newline: bool = True) -> None:
    """The kernel takes no NUL in a path, argv or environment; a newline in a path is never what was meant."""
    if "\0" in value:
        raise ValueError(f"{what} must not contain a NUL character, got {shown(value)}")
    if newline and ("\n" in value or "\r" in value):
        raise ValueError(f"{what} must not contain a line break, got {shown(value)}")


def parse_duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration like 30, 250ms, 30s or 5m, got {type_name(value)}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise ValueError(f"expected a duration like 250ms, 30s or 5m, got {shown(value)}")
        return float(match.group(1)) * _UNIT[match.group(2)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, got {value}")
    if value < 0:
        raise ValueError(f"must not be negative, got {shown(value)}")
    if value > DAY:  # before float(): a huge int would overflow it
        raise ValueError(f"must be at most 1 day (86400s), got {shown(value)}")
    return float(value)


def duration(minimum: float = 0.0, allow_zero: bool = False) -> Parser:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds > DAY:
            raise ValueError(f"must be at most 1 day (86400s), got {shown(value)}")
        if seconds < minimum or (seconds == 0 and not allow_zero):
            raise ValueError(f"must be {'at least ' + str(minimum) + 's' if minimum else 'greater than 0'}"
                             f", got {shown(value)}")
        return seconds
    return parse


def integer(low: int, high: int) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type_name(value)} {shown(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {shown(value)}")
        return value
    return parse


def number(low: float, high: float) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {type_name(value)} {shown(value)}")
        if not math.isfinite(value) or value < low:
            raise ValueError(f"must be at least {low}, got {shown(value)}")
        if value > high:
            raise ValueError(f"must be at most {high:g}, got {shown(value)}")
        return float(value)
    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type_name(value)} {shown(value)}")
    return value


def choice(options: tuple[str, ...]) -> Parser:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {shown(value)}")
        return value.lower()
    return parse


def _fs_bytes(value: str) -> int:
    return len(os.fsencode(value))


def path(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a path, got {type_name(value)} {shown(value)}")
    _plain_text(value, "a path")
    expanded = os.path.expanduser(value)
    if _fs_bytes(expanded) > PATH_MAX:
        raise ValueError(f"a path is at most {PATH_MAX} bytes, got {_fs_bytes(expanded)}: {shown(value)}")
    return Path(expanded)


def path_or_false(value: Any) -> Path | None:
    """A path, or `false` (None) for a feature turned off."""
    if value is False:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a path or false, got {type_name(value)} {shown(value)}")
    return path(value)


def socket_path(value: Any) -> Path:
    """A path a unix socket can be bound to: the kernel's sun_path holds 107 bytes and a NUL."""
    result = path(value)
    size = _fs_bytes(str(result))
    if size > SUN_PATH_MAX:
        raise ValueError(f"a unix socket path is at most {SUN_PATH_MAX} bytes (the kernel's limit), got {size}: "
                         f"{shown(str(result))}; choose a shorter path")
    return result


def optional(parser: Parser) -> Parser:
    def parse(value: Any) -> Any:
        return None if value is None else parser(value)
    return parse


def command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command string: {exc}") from None
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of strings (the argv that starts openclaw)")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ItemError(index, f"expected a non-empty string, got {type_name(item)} {shown(item)}")
        try:
            _plain_text(item, "an argument", newline=False)
        except ValueError as exc:
            raise ItemError(index, str(exc)) from None
        if _fs_bytes(item) > ARG_MAX_STRLEN:
            raise ItemError(index, f"an argument is at most {ARG_MAX_STRLEN} bytes (the kernel's limit)")
    return tuple(os.path.expanduser(item) for item in value)


def env_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: value, got {type_name(value)}")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ItemError(key, f"{shown(key)} is not a valid environment variable name", at_key=True)
        if key == TOKEN_ENV:
            raise ItemError(key, "the gateway token does not go here: use auth.token_file, the keyring "
                                 "or $CREDENTIALS_DIRECTORY/gateway-token", at_key=True)
        if item is None or isinstance(item, dict | list):
            raise ItemError(key, f"expected a string, got {type_name(item)}")
        text = str(item).lower() if isinstance(item, bool) else str(item)
        if "\0" in text:
            raise ItemError(key, "an environment value must not contain a NUL character")
        if _fs_bytes(f"{key}={text}") > ARG_MAX_STRLEN:
            raise ItemError(key, f"an environment entry is at most {ARG_MAX_STRLEN} bytes (the kernel's limit)")
        result[key] = text
    return MappingProxyType(result)


def providers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of provider names, got {type_name(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", item):
            raise ItemError(index, f"{shown(item)} is not a provider name (lowercase letters, digits, - and _; "
                                   "at most 64)")
        if item in value[:index]:
            raise ItemError(index, f"{shown(item)} is listed twice")
    return tuple(value)


WS_PATH_MAX = 2048


def ws_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"expected a URL path starting with '/', got {shown(value)}")
    if len(value) > WS_PATH_MAX or re.search(r"[\x00-\x20\x7f]", value):
        raise ValueError(f"expected a URL path of at most {WS_PATH_MAX} characters without spaces or control "
                         f"characters, got {shown(value)}")
    return value


def group_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a group name, got {type_name(value)} {shown(value)}")
    if len(value) > 256 or re.search(r"[\x00-\x20:\x7f]", value):
        raise ValueError(f"expected a group name (no spaces, colons or control characters), got {shown(value)}")
    return value


def regex_list(value: Any) -> tuple[re.Pattern[str], ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of regular expressions, got {type_name(value)}")
    compiled = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ItemError(index, f"expected a regex string, got {type_name(item)} {shown(item)}")
        try:
            compiled.append(re.compile(item))
        except (re.error, RecursionError, OverflowError) as exc:
            raise ItemError(index, f"{shown(item)} is not a valid regex: {exc}") from None
    return tuple(compiled)

