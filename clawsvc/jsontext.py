"""JSON as clawsvc writes it on its own sockets (compact, UTF-8, one line), and JSON text kept as text.

What clawsvc holds on behalf of others (the events history, each follower's outbox) is kept as encoded text, not
as parsed objects: 256 KB of `[[],[],...]` is 256 KB as text and about 6 MB as Python lists. RawJSON marks text
already encoded, so that encoders put it in as it is instead of parsing it again.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any


class RawJSON(bytes):
    """One JSON value already encoded by `dumps` (so compact, UTF-8, without a line break)."""


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def dumps(value: Any) -> bytes:
    """The compact UTF-8 JSON of value (str() for what JSON has no type for); RawJSON inside a list or a dict is
    not looked into: only a RawJSON `value` itself is taken as it is."""
    if isinstance(value, RawJSON):
        return bytes(value)
    return _ENCODER.encode(value).encode("utf-8")


def string(text: str) -> bytes:
    """A JSON string, as dumps writes it."""
    return encode_basestring(text).encode("utf-8")


def raw(value: Any) -> RawJSON:
    return RawJSON(dumps(value))


def array(items: list[bytes]) -> RawJSON:
    """A JSON array of values each already encoded."""
    return RawJSON(b"[" + b",".join(items) + b"]")


def obj(fields: list[tuple[str, Any]]) -> RawJSON:
    """A JSON object of these fields in this order; a RawJSON value goes in as it is."""
    if not any(type(value) is RawJSON for _, value in fields):
        return RawJSON(dumps(dict(fields)))  # one call: the common case, and the fast one
    return RawJSON(b"{" + b",".join(dumps(str(name)) + b":" + dumps(value) for name, value in fields) + b"}")
