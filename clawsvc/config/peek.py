"""A few settings read from a config file that may be broken, for the commands that only talk to the running
service (status, rpc, events, restart-gateway): after an edit with a typo, `systemctl reload` keeps the old config
running, and those commands must still find its control socket.

Each setting wanted is parsed alone, with its own parser from the schema: a YAML error, an unknown key or a bad
value elsewhere in the file does not matter. When the file as a whole is not valid YAML, each top-level section
(a line `name:` at column 0 and the lines under it) is tried on its own. A setting that is absent is left out (the
caller uses the default); one that cannot be read is left out too, with the reason in `problems`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clawsvc.config.loader import SCHEMA, read_config_file
from clawsvc.config.model import ConfigError
from clawsvc.config.reader import Reader

_SECTION_START = re.compile(r"^[^\s#-][^:]*:", re.MULTILINE)  # a top-level key: not indented, not a comment


@dataclass(frozen=True)
class Peeked:
    values: dict[str, Any] = field(default_factory=dict)  # dotted key -> parsed value, for those found and valid
    problems: dict[str, str] = field(default_factory=dict)  # dotted key -> why it could not be read (one line)


def _member(reader: Reader, node: yaml.Node | None, name: str) -> yaml.Node | None:
    """The value node of `name` in a mapping node; None when absent or `node` is not a mapping."""
    if not isinstance(node, yaml.MappingNode):
        return None
    found = [(key, value) for key, value in node.value if isinstance(key, yaml.ScalarNode) and key.value == name]
    if len(found) > 1:
        raise reader.fail(found[1][0], name, "duplicate key")
    return found[0][1] if found else None


def _read(reader: Reader, root: yaml.Node | None, dotted: str, peeked: Peeked) -> None:
    section, key = dotted.split(".")
    spec = SCHEMA[section]
    assert isinstance(spec, dict)
    try:
        parent = _member(reader, root, section)
        node = _member(reader, parent, key)
        if node is not None:
            peeked.values[dotted] = reader.parse(node, dotted, spec[key])
        elif isinstance(parent, yaml.MappingNode):
            reader.mapping(parent, section, spec)  # absent: a misspelt key in its section is the likely reason
    except ConfigError as exc:
        peeked.problems[dotted] = str(exc)


def _sections(text: str) -> dict[str, str]:
    """Each top-level section's text, padded with the lines above it so that errors name the file's lines."""
    starts = [match.start() for match in _SECTION_START.finditer(text)]
    pieces = {}
    for begin, end in zip(starts, [*starts[1:], len(text)], strict=True):
        name = text[begin:text.index(":", begin)].strip()
        pieces[name] = "\n" * text.count("\n", 0, begin) + text[begin:end]
    return pieces


def peek(path: Path, keys: Iterable[str]) -> Peeked:
    """The settings `keys` ("control.socket", ...) of the file at `path`. FileNotFoundError when it does not
    exist, ConfigError when it cannot be read (unreadable, not a small regular file, not UTF-8)."""
    text = read_config_file(path)
    peeked = Peeked()
    try:
        whole = Reader(text, str(path))
        root = whole.root()
    except ConfigError as exc:
        broken = str(exc)
    else:
        for dotted in keys:
            _read(whole, root, dotted, peeked)
        return peeked
    sections = _sections(text)
    for dotted in keys:
        piece = sections.get(dotted.split(".")[0])
        if piece is None:
            continue
        try:
            alone = Reader(piece, str(path))
            _read(alone, alone.root(), dotted, peeked)
        except ConfigError:
            peeked.problems[dotted] = broken
    return peeked
