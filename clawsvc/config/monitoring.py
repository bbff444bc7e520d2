"""Value parsers of the monitoring keys: gateway.memory (sizes), metrics.listen, and the alerts: hooks (their event
names are checked against the catalogue by preflight: config cannot import it). Each raises ValueError (ItemError
for one element) with a message that reads well after "key: ", as the parsers in values.py."""

from __future__ import annotations

import math
import re
from typing import Any

from clawsvc.config.model import AlertHook, MemoryConfig
from clawsvc.config.values import (
    WS_PATH_MAX,
    ItemError,
    Parser,
    command,
    duration,
    optional,
    path,
    type_name,
)
from clawsvc.text import shown

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_SIZE_UNIT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_SIZE, MAX_SIZE = 1 << 20, 1 << 50


def size(value: Any) -> int:
    """Bytes: a number, or a number with K, M, G or T (1024-based, as systemd's MemoryMax=; KiB, MB... alike)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a size like 800M or 1.5G, got {type_name(value)}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if not match:
            raise ValueError(f"expected a size like 800M, 1.5G or 2GiB, got {shown(value)}")
        number = float(match.group(1)) * _SIZE_UNIT[match.group(2).lower()]
    else:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite size, got {value}")
        number = float(value) if abs(value) <= MAX_SIZE else float(MAX_SIZE + 1)
    if not MIN_SIZE <= number <= MAX_SIZE:
        raise ValueError(f"must be between 1M and 1P, got {shown(value)}")
    return int(number)


def memory_settings(value: Any) -> MemoryConfig:
    """gateway.memory: {warn_above, restart_above, cooldown}; the MemoryConfig is built by the caller's type."""
    if value is None:
        return MemoryConfig()
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping {{warn_above, restart_above, cooldown}}, got {type_name(value)}")
    parsers: dict[str, Parser] = {"warn_above": optional(size), "restart_above": optional(size),
                                  "cooldown": duration(minimum=60.0)}
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in parsers:
            raise ItemError(key, f"unknown key {shown(key)}; known: {', '.join(parsers)}", at_key=True)
        try:
            out[key] = parsers[key](item)
        except ValueError as exc:
            raise ItemError(key, str(exc)) from None
    return MemoryConfig(**out)


LOOPBACK_NAMES = ("localhost",)


def listen_address(value: Any) -> str:
    """HOST:PORT to listen on: an IP address ([v6] in brackets) or localhost, and a port 1-65535."""
    import ipaddress

    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {shown(value)}")
    host, _, port_text = value.strip().rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare not in LOOPBACK_NAMES:
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            raise ValueError(f"expected an IP address or localhost before the port, got {shown(host)}") from None
        if address.version == 6 and bare == host:
            raise ValueError(f"write an IPv6 address in brackets: [{bare}]:{port_text}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"expected a port 1-65535 after the host, got {shown(port_text)}")
    return f"{host}:{int(port_text)}"


def split_listen(value: str) -> tuple[str, int]:
    """(host without brackets, port) of a listen_address."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


EVENT_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,99}")
MAX_HOOKS = 32
HOOK_KEYS = ("on", "command", "webhook", "headers_file", "min_interval", "timeout")


def webhook_url(value: Any) -> str:
    """An http(s) URL with a host and no user:password (credentials come from headers_file, never the YAML)."""
    from urllib.parse import urlsplit

    if not isinstance(value, str) or len(value) > WS_PATH_MAX or re.search(r"[\x00-\x20\x7f]", value):
        raise ValueError(f"expected an http:// or https:// URL without spaces, got {shown(value)}")
    if not value.isascii():
        raise ValueError("write the URL in ASCII: its path percent-encoded (%C3%BC for ü), its host in punycode "
                         "(xn--...)")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
    except ValueError as exc:
        raise ValueError(f"not a usable URL ({exc}): {shown(value)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {shown(value)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a user or password in the URL would sit in the YAML in plain text: put an "
                         "'Authorization: ...' line in headers_file instead")
    return value


def _hook(value: Any) -> AlertHook:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping {{on, command | webhook, ...}}, got {type_name(value)}")
    value = {"on" if key is True else key: item for key, item in value.items()}  # YAML 1.1 reads `on` as true
    unknown = [key for key in value if key not in HOOK_KEYS]
    if unknown:
        raise ValueError(f"unknown key {shown(unknown[0])}; known: {', '.join(HOOK_KEYS)}")
    names = value.get("on")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and EVENT_NAME.fullmatch(n)
                                                           for n in names):
        raise ValueError(f"on: expected a list of event names (see `clawsvc events --names`), got {shown(names)}")
    if ("command" in value) == ("webhook" in value):
        raise ValueError("give exactly one of command: [argv] or webhook: URL")
    if "headers_file" in value and "webhook" not in value:
        raise ValueError("headers_file goes with webhook:, not command:")
    parsed: dict[str, Any] = {"on": tuple(dict.fromkeys(names))}
    for key, parser in (("command", command), ("webhook", webhook_url), ("headers_file", path),
                        ("min_interval", duration(minimum=1.0)), ("timeout", duration(minimum=0.1))):
        if key in value:
            try:
                parsed[key] = parser(value[key])
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
    if parsed.get("timeout", 10.0) > 300.0:
        raise ValueError(f"timeout: at most 300s, got {shown(value['timeout'])}")
    return AlertHook(**parsed)


def alert_hooks(value: Any) -> tuple[AlertHook, ...]:
    """alerts: a list of hooks; the event names are checked against the catalogue by preflight."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"expected a list of hooks, got {type_name(value)}")
    if len(value) > MAX_HOOKS:
        raise ValueError(f"at most {MAX_HOOKS} hooks, got {len(value)}")
    hooks = []
    for index, item in enumerate(value):
        try:
            hooks.append(_hook(item))
        except ValueError as exc:
            raise ItemError(index, str(exc)) from None
    return tuple(hooks)
