"""Config -> plain data and YAML for people (secrets redacted), and which changes need the gateway restarted."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from clawsvc.config.model import REDACTED, SECRET_ENV, Config, GatewayConfig
from clawsvc.text import cut

PRINT_MAX = 4096  # `check-config --print` shows longer strings cut


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.compare}
    return value


def to_dict(config: Config, redact: bool = True) -> dict[str, Any]:
    """The effective config as plain data; env values that look secret are redacted."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.name == "source":
            continue
        value = getattr(config, f.name)
        if hasattr(value, "__dataclass_fields__"):
            out[f.name] = {sub.name: _plain(getattr(value, sub.name)) for sub in fields(value)}
        else:
            out[f.name] = _plain(value)
    for hook in out["alerts"] if redact else ():
        if hook["webhook"]:
            hook["webhook"] = _redacted_url(hook["webhook"])
    if out["gateway"]["compile_cache"] is None:
        out["gateway"]["compile_cache"] = False  # as written in the file: null would read as "no value"
    if redact:
        out["gateway"]["env"] = {key: REDACTED if SECRET_ENV.search(key) else item
                                 for key, item in out["gateway"]["env"].items()}
    return out


def _redacted_url(url: str) -> str:
    """Only scheme, host and port of a webhook URL: its path may hold a secret (a chat's incoming webhook)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/" + (REDACTED if parts.path.strip("/") or parts.query else "")


def _cut_long(value: Any) -> Any:
    if isinstance(value, str) and len(value) > PRINT_MAX:
        return f"{cut(value)} ({len(value)} characters, cut)"
    if isinstance(value, list):
        return [_cut_long(item) for item in value]
    if isinstance(value, dict):
        return {key: _cut_long(item) for key, item in value.items()}
    return value


def dump(config: Config) -> str:
    """The effective config as YAML for people: secrets redacted, strings over PRINT_MAX characters cut."""
    return yaml.safe_dump(_cut_long(to_dict(config)), sort_keys=False, default_flow_style=False)


APPLIED_IN_PLACE = ("memory",)  # gateway.* keys clawsvc reads itself: the gateway never sees them


def gateway_affecting(old: Config, new: Config) -> list[str]:
    """Dotted keys whose change needs the gateway restarted (the rest apply in place)."""
    changed = [f"gateway.{f.name}" for f in fields(GatewayConfig)
               if f.name not in APPLIED_IN_PLACE and getattr(old.gateway, f.name) != getattr(new.gateway, f.name)]
    if old.auth != new.auth:
        changed.append("auth.token_file")
    if old.providers != new.providers:
        changed.append("providers")
    if old.connection.path != new.connection.path:
        changed.append("connection.path")
    return changed
