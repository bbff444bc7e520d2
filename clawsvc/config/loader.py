"""The config file -> Config: the schema of sections and settings, parse_config, the checks between settings,
and load_config (which file, read how)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from clawsvc import trust
from clawsvc.config.model import (
    AlertHook,
    AuthConfig,
    Config,
    ConfigError,
    ConnectionConfig,
    ControlConfig,
    GatewayConfig,
    HealthConfig,
    LoggingConfig,
    MetricsConfig,
    ReconnectConfig,
    default_config_path,
)
from clawsvc.config.monitoring import alert_hooks, listen_address, memory_settings
from clawsvc.config.reader import MAX_CONFIG_BYTES, Reader
from clawsvc.config.values import (
    BINDS,
    LEVELS,
    Parser,
    boolean,
    choice,
    command,
    duration,
    env_map,
    group_name,
    integer,
    number,
    optional,
    path,
    path_or_false,
    providers,
    regex_list,
    socket_path,
    ws_path,
)
from clawsvc.text import cut

SCHEMA: dict[str, dict[str, Parser] | Parser] = {
    "gateway": {
        "command": command,
        "port": integer(1, 65535),
        "bind": choice(BINDS),
        "state_dir": path,
        "compile_cache": path_or_false,
        "env": env_map,
        "adopt_existing": boolean,
        "start_timeout": duration(),
        "stop_timeout": duration(),
        "memory": memory_settings,
    },
    "auth": {"token_file": optional(path)},
    "providers": providers,
    "connection": {
        "path": ws_path,
        "request_timeout": duration(),
        "handshake_timeout": duration(),
        "ping_interval": duration(allow_zero=True),
    },
    "health": {
        "interval": duration(),
        "timeout": duration(),
        "failures": integer(1, 100),
        "tick_grace": number(1.0, 100.0),
        "not_ready_after": duration(),
    },
    "reconnect": {
        "base_delay": duration(allow_zero=True),
        "max_delay": duration(),
        "max_attempts": integer(0, 10_000),
        "stable_after": duration(allow_zero=True),
    },
    "control": {"socket": socket_path, "group": optional(group_name)},
    "metrics": {"listen": optional(listen_address), "textfile": optional(path)},
    "alerts": alert_hooks,
    "logging": {
        "level": choice(LEVELS),
        "gateway_stdout": choice(LEVELS),
        "gateway_stderr": choice(LEVELS),
        "suppress": regex_list,
    },
}

_SECTIONS: dict[str, type] = {
    "gateway": GatewayConfig, "auth": AuthConfig, "connection": ConnectionConfig, "health": HealthConfig,
    "reconnect": ReconnectConfig, "control": ControlConfig, "metrics": MetricsConfig, "logging": LoggingConfig,
}


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Parse config text; `filename` is only used in messages and as Config.source."""
    reader = Reader(text, filename)
    root = reader.root()
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == "" and root.tag.endswith("null")):
        return Config(source=Path(filename))
    sections = reader.mapping(root, "", SCHEMA)
    built: dict[str, Any] = {}
    written: dict[str, yaml.Node] = {}  # dotted key -> the node of each setting present in the file
    for name, node in sections.items():
        spec = SCHEMA[name]
        if not isinstance(spec, dict):
            built[name] = reader.parse(node, name, spec)
            if name == "alerts":
                built[name] = _with_lines(built[name], node)
            continue
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith("null"):
            continue  # "health:" with nothing under it means all defaults
        children = reader.mapping(node, name, spec)
        written.update({f"{name}.{key}": child for key, child in children.items()})
        values = {key: reader.parse(child, f"{name}.{key}", spec[key]) for key, child in children.items()}
        built[name] = _SECTIONS[name](**values)
    config = Config(**built, source=Path(filename))
    _check_relations(config, written, reader)
    return config


def _with_lines(hooks: tuple[AlertHook, ...], node: yaml.Node) -> tuple[AlertHook, ...]:
    """Each hook with the line of its `on:` value, so a name the catalogue lacks is reported at file:line."""
    if not isinstance(node, yaml.SequenceNode):
        return hooks
    lines = []
    for item in node.value:
        found = [value for key, value in getattr(item, "value", ()) if getattr(key, "value", None) == "on"]
        lines.append((found[0] if found else item).start_mark.line + 1)
    return tuple(replace(hook, line=line) for hook, line in zip(hooks, lines, strict=True))


Relation = tuple[str, float, str]  # dotted key, its value, how it must relate to the other key


def _check_relations(config: Config, written: dict[str, yaml.Node], reader: Reader) -> None:
    """Settings that must agree; the error points at the offending key, or at its partner when only that is set."""
    rc, hc = config.reconnect, config.health
    if rc.max_delay < rc.base_delay:
        raise _relation_error(reader, written, ("reconnect.max_delay", rc.max_delay, "must be at least"),
                              ("reconnect.base_delay", rc.base_delay, "must not exceed"))
    if hc.timeout > hc.interval:
        raise _relation_error(reader, written, ("health.timeout", hc.timeout, "must not exceed"),
                              ("health.interval", hc.interval, "must be at least"))


def _relation_error(reader: Reader, written: dict[str, yaml.Node], offender: Relation,
                    partner: Relation) -> ConfigError:
    key, value, rule = offender
    other_key, other_value, other_rule = partner
    if key in written:
        return reader.fail(written[key], key, f"{rule} {other_key} ({other_value:g}s), got {value:g}s")
    return reader.fail(written.get(other_key), other_key,
                       f"{other_rule} {key} ({value:g}s, the default), got {other_value:g}s")


def read_config_file(target: Path) -> str:
    """The file's text: a regular file of at most MAX_CONFIG_BYTES, read without blocking (a FIFO cannot hang
    us, /dev/zero cannot fill memory). FileNotFoundError when it does not exist, ConfigError (one line) when it
    cannot be read."""
    shown = cut(str(target), 300)
    try:
        data = trust.read_regular(target, "config file", cap=MAX_CONFIG_BYTES, nofollow=False, shown=shown).data
        return data.decode("utf-8")
    except trust.TrustError as exc:
        raise ConfigError(str(exc)) from None
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{shown}: cannot read config file: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate a config file; a missing file is an error only when it was named."""
    explicit = path is not None or bool(os.environ.get("CLAWSVC_CONFIG"))
    target = Path(path) if path is not None else default_config_path()
    try:
        text = read_config_file(target)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: config file not found") from None
        return Config(source=None)
    return parse_config(text, str(target))
