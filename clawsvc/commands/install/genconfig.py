"""The config `clawsvc install` writes: the shipped example with gateway.command (and, for an instance, its port,
state_dir and control.socket) filled in, comments kept; and the first free port for a new instance."""

from __future__ import annotations

import errno
import json
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from clawsvc.config import Config, ConfigError, instances, parse_config

FIRST_INSTANCE_PORT = 18790  # 18789 is the main unit's default
LAST_PORT = 65535


class ConfigTemplateError(Exception):
    """The shipped example cannot be filled in (it changed shape); str() is one line."""


@dataclass(frozen=True)
class Settings:
    """What install fills into the example; None keeps the example's value."""

    command: tuple[str, ...]
    port: int | None = None
    state_dir: Path | None = None
    compile_cache: Path | None = None
    socket: Path | None = None


def _replace(text: str, pattern: str, line: str, key: str) -> str:
    """Replace the first line matching `pattern` (a whole line, indentation included) with `line`."""
    new, count = re.subn(pattern, line.replace("\\", "\\\\"), text, count=1, flags=re.MULTILINE)
    if count != 1:
        raise ConfigTemplateError(f"the shipped example config has no line for {key} to fill in")
    return new


def _yaml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def render(example: str, settings: Settings) -> str:
    """The example text with `settings` written into its lines; checked by parsing it back."""
    command = "[" + ", ".join(_yaml_string(word) for word in settings.command) + "]"
    text = _replace(example, r"^  command: .*$", f"  command: {command}", "gateway.command")
    if settings.port is not None:
        text = _replace(text, r"^  port: \d+$", f"  port: {settings.port}", "gateway.port")
    if settings.state_dir is not None:
        text = _replace(text, r"^  # state_dir: .*$", f"  state_dir: {_yaml_string(str(settings.state_dir))}",
                        "gateway.state_dir")
    if settings.compile_cache is not None:
        text = _replace(text, r"^  # compile_cache: .*$",
                        f"  compile_cache: {_yaml_string(str(settings.compile_cache))}", "gateway.compile_cache")
    if settings.socket is not None:
        text = _replace(text, r"^  # socket: .*$", f"  socket: {_yaml_string(str(settings.socket))}",
                        "control.socket")
    _check_rendered(text, settings)
    return text


def _check_rendered(text: str, settings: Settings) -> None:
    try:
        config = parse_config(text, "generated config")
    except ConfigError as exc:
        raise ConfigTemplateError(f"the generated config is invalid: {exc}") from None
    gw = config.gateway
    got = (gw.command, gw.port, gw.state_dir, gw.compile_cache, config.control.socket)
    want = (settings.command, settings.port or got[1], settings.state_dir or got[2],
            settings.compile_cache or got[3], settings.socket or got[4])
    if got != want:
        raise ConfigTemplateError(f"the generated config says {got}, expected {want}")


def instance_settings(name: str, command: Sequence[str], port: int) -> Settings:
    return Settings(tuple(command), port, instances.state_dir(name), instances.compile_cache(name),
                    instances.control_socket(name))


def configured_port(path: Path) -> int | None:
    """gateway.port of an existing config file, or None when it is missing or unreadable as a config."""
    config = _parsed(path)
    return None if config is None else config.gateway.port


def _parsed(path: Path) -> Config | None:
    try:
        return parse_config(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return None


def ports_in_use_by_configs(config_dir: Path, skip: Path) -> set[int]:
    """The gateway ports the other configs in `config_dir` name (the default, 18789, for one without a port)."""
    used = set()
    for path in sorted(config_dir.glob("*.yaml")):
        if path != skip and (port := configured_port(path)) is not None:
            used.add(port)
    return used


def listening(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:port (a bind test: only a listener makes it fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def free_port(config_dir: Path, skip: Path, first: int = FIRST_INSTANCE_PORT) -> int:
    """The first port from `first` that no other config names and nothing listens on."""
    used = ports_in_use_by_configs(config_dir, skip)
    for port in range(first, LAST_PORT + 1):
        if port not in used and not listening(port):
            return port
    raise ConfigTemplateError(f"no free port from {first} up; pass --port")
