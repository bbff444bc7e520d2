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

BINDS = ("loopback", "lan", "tailnet", "auto")
LEVELS = ("debug", "info", "warning", "error", "critical")
TOKEN_ENV = "OPENCLAW_GATEWAY_TOKEN"


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
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration like 30, 250ms, 30s or 5m, got {_type_name(value)}")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration like 250ms, 30s or 5m, got {value!r}")
        return float(match.group(1)) * _UNIT[match.group(2)]
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, got {value}")
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")
    return float(value)


def duration(minimum: float = 0.0, allow_zero: bool = False) -> Parser:
    def parse(value: Any) -> float:
        seconds = parse_duration(value)
        if seconds < minimum or (seconds == 0 and not allow_zero):
            raise ValueError(f"must be {'at least ' + str(minimum) + 's' if minimum else 'greater than 0'}"
                             f", got {value!r}")
        return seconds
    return parse


def integer(low: int, high: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_type_name(value)} {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value
    return parse


def number(low: float) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {_type_name(value)} {value!r}")
        if not math.isfinite(value) or value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        return float(value)
    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_type_name(value)} {value!r}")
    return value


def choice(options: tuple[str, ...]) -> Parser:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise ValueError(f"expected one of {', '.join(options)}, got {value!r}")
        return value.lower()
    return parse


def path(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a path, got {_type_name(value)} {value!r}")
    return Path(value).expanduser()


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
            raise ItemError(index, f"expected a non-empty string, got {_type_name(item)} {item!r}")
    return tuple(os.path.expanduser(item) for item in value)


def env_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: value, got {_type_name(value)}")
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ItemError(key, f"{key!r} is not a valid environment variable name", at_key=True)
        if key == TOKEN_ENV:
            raise ItemError(key, "the gateway token does not go here: use auth.token_file, the keyring "
                                 "or $CREDENTIALS_DIRECTORY/gateway-token", at_key=True)
        if item is None or isinstance(item, dict | list):
            raise ItemError(key, f"expected a string, got {_type_name(item)}")
        result[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return MappingProxyType(result)


def providers(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of provider names, got {_type_name(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", item):
            raise ItemError(index, f"{item!r} is not a provider name (lowercase letters, digits, - and _)")
        if item in value[:index]:
            raise ItemError(index, f"{item!r} is listed twice")
    return tuple(value)


def ws_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"expected a URL path starting with '/', got {value!r}")
    return value


def group_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a group name, got {_type_name(value)} {value!r}")
    return value


def regex_list(value: Any) -> tuple[re.Pattern[str], ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of regular expressions, got {_type_name(value)}")
    compiled = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ItemError(index, f"expected a regex string, got {_type_name(item)} {item!r}")
        try:
            compiled.append(re.compile(item))
        except re.error as exc:
            raise ItemError(index, f"{item!r} is not a valid regex: {exc}") from None
    return tuple(compiled)
