"""YAML config file -> frozen, typed Config; every error names file:line and the dotted key."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from clawsvc import trust
from clawsvc.config.values import (
    BINDS,
    LEVELS,
    MAX_DIGITS,
    ItemError,
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
    providers,
    regex_list,
    socket_path,
    ws_path,
)
from clawsvc.text import cut, shown

SECRET_ENV = re.compile(r"TOKEN|KEY|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
REDACTED = "<redacted>"
MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 10_000  # values in the document, counted again for every *alias that repeats them
MAX_CHARS = 2 * MAX_CONFIG_BYTES  # characters of all scalars, counted the same way
MAX_DEPTH = 64  # nesting levels; a real config has four
PRINT_MAX = 4096  # `check-config --print` shows longer strings cut


class ConfigError(Exception):
    """A config file that cannot be used; str() is one line naming file:line and key."""


def _is_root() -> bool:
    return os.geteuid() == 0


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def default_config_path() -> Path:
    """-c is handled by the caller; then $CLAWSVC_CONFIG, /etc as root, else XDG config."""
    env = os.environ.get("CLAWSVC_CONFIG")
    if env:
        return Path(env)
    if _is_root():
        return Path("/etc/clawsvc/clawsvc.yaml")
    return _xdg("XDG_CONFIG_HOME", ".config") / "clawsvc" / "clawsvc.yaml"


def default_state_dir() -> Path:
    if _is_root():
        return Path("/var/lib/clawsvc/openclaw")
    return _xdg("XDG_STATE_HOME", ".local/state") / "clawsvc" / "openclaw"


SYSTEM_CONTROL_SOCKET = Path("/run/clawsvc/control.sock")


def default_control_socket() -> Path:
    if _is_root():
        return SYSTEM_CONTROL_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(f"/tmp/clawsvc-{os.getuid()}")
    return base / "clawsvc" / "control.sock"


@dataclass(frozen=True)
class GatewayConfig:
    command: tuple[str, ...] = ("openclaw",)
    port: int = 18789
    bind: str = "loopback"
    state_dir: Path = field(default_factory=default_state_dir)
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    adopt_existing: bool = True
    start_timeout: float = 120.0
    stop_timeout: float = 10.0


@dataclass(frozen=True)
class AuthConfig:
    token_file: Path | None = None


@dataclass(frozen=True)
class ConnectionConfig:
    path: str = "/"
    request_timeout: float = 30.0
    handshake_timeout: float = 10.0
    ping_interval: float = 30.0


@dataclass(frozen=True)
class HealthConfig:
    interval: float = 30.0
    timeout: float = 5.0
    failures: int = 3
    tick_grace: float = 2.0


@dataclass(frozen=True)
class ReconnectConfig:
    base_delay: float = 1.0
    max_delay: float = 30.0
    max_attempts: int = 10
    stable_after: float = 60.0


@dataclass(frozen=True)
class ControlConfig:
    socket: Path = field(default_factory=default_control_socket)
    group: str | None = None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    gateway_stdout: str = "debug"
    gateway_stderr: str = "warning"
    suppress: tuple[re.Pattern[str], ...] = ()


DEFAULT_PROVIDERS = ("anthropic", "openai", "google", "openrouter")


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: Path | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.gateway.port}{self.connection.path}"


SCHEMA: dict[str, dict[str, Parser] | Parser] = {
    "gateway": {
        "command": command,
        "port": integer(1, 65535),
        "bind": choice(BINDS),
        "state_dir": path,
        "env": env_map,
        "adopt_existing": boolean,
        "start_timeout": duration(),
        "stop_timeout": duration(),
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
    },
    "reconnect": {
        "base_delay": duration(allow_zero=True),
        "max_delay": duration(),
        "max_attempts": integer(0, 10_000),
        "stable_after": duration(allow_zero=True),
    },
    "control": {"socket": socket_path, "group": optional(group_name)},
    "logging": {
        "level": choice(LEVELS),
        "gateway_stdout": choice(LEVELS),
        "gateway_stderr": choice(LEVELS),
        "suppress": regex_list,
    },
}

_SECTIONS: dict[str, type] = {
    "gateway": GatewayConfig, "auth": AuthConfig, "connection": ConnectionConfig, "health": HealthConfig,
    "reconnect": ReconnectConfig, "control": ControlConfig, "logging": LoggingConfig,
}


# ---------------------------------------------------------------- loading

class _Refused(yaml.YAMLError):
    """A document over one of the bounds, found while composing it (before anything is constructed)."""

    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing at MAX_NODES nodes or MAX_DEPTH levels (instead of RecursionError)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.nodes = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.nodes += 1
        self.depth += 1
        try:
            if self.nodes > MAX_NODES:
                raise _Refused(f"more than {MAX_NODES} values in one config", self.peek_event().start_mark)
            if self.depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class _Reader:
    """Walks the composed YAML node tree so every error can point at a line."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        try:
            self.loader = _BoundedLoader(text)
        except yaml.reader.ReaderError as exc:  # a control character such as NUL in the file itself
            line = text.count("\n", 0, max(exc.position, 0)) + 1
            raise ConfigError(f"{filename}:{line}: YAML syntax error: {str(exc).splitlines()[0]}") from None

    def fail(self, node: yaml.Node | None, key: str, problem: str) -> ConfigError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f" {key}:" if key else ""
        return ConfigError(f"{self.filename}{line}:{where} {problem}")

    def root(self) -> yaml.Node | None:
        """The document's node graph, refused when it is too big, too deep or expands too far through aliases."""
        try:
            node = self.loader.get_single_node()
        except _Refused as exc:
            line = f":{exc.mark.line + 1}" if exc.mark else ""
            raise ConfigError(f"{self.filename}{line}: {exc.problem}; write a smaller config") from None
        except RecursionError:
            raise ConfigError(f"{self.filename}: nested too deeply; write a smaller config") from None
        except yaml.MarkedYAMLError as exc:
            problem = exc.problem or ""
            mark = exc.problem_mark or exc.context_mark
            if exc.context_mark is not None and ("stream end" in problem or "end of stream" in problem):
                mark = exc.context_mark  # an unclosed bracket or quote: the line that opened it, not the file's end
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{self.filename}{line}: YAML syntax error: {cut(_syntax_problem(exc), 160)}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.filename}: YAML error: {cut(str(exc).splitlines()[0], 160)}") from None
        if node is not None:
            self._measure(node, "", {}, set(), 0)
        return node

    def _measure(self, node: yaml.Node, key: str, sizes: dict[int, tuple[int, int]], active: set[int],
                 depth: int) -> tuple[int, int]:
        """(values, characters) the node stands for with every alias expanded; memoised, so linear in the
        file however far the aliases multiply it (a "billion laughs" is refused here, before anything is built)."""
        known = sizes.get(id(node))
        if known is not None:
            return known
        if id(node) in active:
            raise self.fail(node, key, "an alias refers to a collection it is part of (a recursive structure); "
                                       "write the values out")
        if depth > MAX_DEPTH:
            raise self.fail(node, key, f"nested (through aliases) more than {MAX_DEPTH} levels deep; write the "
                                       "values out")
        if isinstance(node, yaml.ScalarNode):
            self._check_number(node, key)
            sizes[id(node)] = (1, len(node.value))
            return sizes[id(node)]
        active.add(id(node))
        count, chars = 1, 0
        for child, child_key in _children(node, key):
            more, longer = self._measure(child, child_key, sizes, active, depth + 1)
            count, chars = count + more, chars + longer
            if count > MAX_NODES or chars > MAX_CHARS:
                raise self.fail(node, key, f"expands through YAML aliases to more than {MAX_NODES} values or "
                                           f"{MAX_CHARS // MAX_CONFIG_BYTES} MiB; write the values out")
        active.discard(id(node))
        sizes[id(node)] = (count, chars)
        return sizes[id(node)]

    def _check_number(self, node: yaml.ScalarNode, key: str) -> None:
        """Refuse a number with absurdly many digits before int() or float() is asked to build it."""
        if node.tag in _NUMBER_TAGS:
            digits = sum(ch.isalnum() for ch in node.value)
            if digits > MAX_DIGITS:
                raise self.fail(node, key, f"a number of {digits} digits is out of range")

    def value(self, node: yaml.Node, key: str) -> Any:
        self._no_duplicates(node, key, set())
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.fail(node, key, f"cannot read value: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise self.fail(node, key, f"cannot read value: {cut(str(exc).splitlines()[0], 200)}") from None
        except (ValueError, ArithmeticError) as exc:  # e.g. !!int abc, !!timestamp 2024-13-45
            raise self.fail(node, key, f"cannot read value: {cut(str(exc), 200)}") from None

    def _no_duplicates(self, node: yaml.Node, key: str, seen: set[int]) -> None:
        """PyYAML silently keeps the last of two equal keys; an admin who wrote both meant something."""
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                self._no_duplicates(child, f"{key}[{index}]", seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key_node, child in node.value:
                name = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                if name is not None and name in first:
                    raise self.fail(key_node, f"{key}.{cut(name)}", f"duplicate key (first set on line "
                                                               f"{first[name].start_mark.line + 1})")
                if name is not None:
                    first[name] = key_node
                self._no_duplicates(child, f"{key}.{cut(str(name))}", seen)

    def mapping(self, node: yaml.Node, key: str, allowed: Mapping[str, Any]) -> dict[str, yaml.Node]:
        """The settings of one section as name -> value node, each name checked against the schema."""
        if not isinstance(node, yaml.MappingNode):
            what = "a mapping of settings" if key else "a mapping of sections (gateway:, auth:, ...)"
            raise self.fail(node, key, f"expected {what}, got {self._kind(node)}")
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = self.value(key_node, key)
            dotted = f"{key}.{cut(str(name))}" if key else cut(str(name))
            if not isinstance(name, str) or name not in allowed:
                hint = difflib.get_close_matches(cut(str(name)), list(allowed), n=1)
                suggestion = f" (did you mean {key + '.' if key else ''}{hint[0]}?)" if hint else ""
                known = f"; known keys: {', '.join(allowed)}" if not hint else ""
                raise self.fail(key_node, dotted, f"unknown key{suggestion}{known}")
            if name in seen:
                raise self.fail(key_node, dotted, f"duplicate key (first set on line "
                                                  f"{seen[name].start_mark.line + 1})")
            seen[name] = value_node
        return seen

    @staticmethod
    def _kind(node: yaml.Node) -> str:
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if isinstance(node, yaml.ScalarNode):
            return f"the value {shown(node.value)}" if node.value else "an empty value"
        return "a mapping"

    def parse(self, node: yaml.Node, key: str, parser: Parser) -> Any:
        try:
            return parser(self.value(node, key))
        except ItemError as exc:
            child, dotted = self._item(node, key, exc)
            raise self.fail(child, dotted, str(exc)) from None
        except ValueError as exc:
            raise self.fail(node, key, cut(str(exc), 300)) from None

    def _item(self, node: yaml.Node, key: str, exc: ItemError) -> tuple[yaml.Node, str]:
        """The node and dotted name of the list element or mapping entry an ItemError is about."""
        if isinstance(node, yaml.SequenceNode) and isinstance(exc.item, int) and exc.item < len(node.value):
            return node.value[exc.item], f"{key}[{exc.item}]"
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if self.loader.construct_object(key_node) == exc.item:
                    return key_node if exc.at_key else value_node, f"{key}.{exc.item}"
        return node, key


def _key_name(node: yaml.Node) -> str | None:
    return cut(str(node.value)) if isinstance(node, yaml.ScalarNode) else None


def _children(node: yaml.Node, key: str) -> list[tuple[yaml.Node, str]]:
    """The nodes directly under a collection node (mapping keys too), each with its dotted name."""
    if isinstance(node, yaml.SequenceNode):
        return [(child, f"{key}[{index}]") for index, child in enumerate(node.value)]
    pairs: list[tuple[yaml.Node, str]] = []
    for key_node, child in node.value:
        name = _key_name(key_node)
        dotted = key if name is None else f"{key}.{name}" if key else name
        pairs += [(key_node, dotted), (child, dotted)]
    return pairs


def _syntax_problem(exc: yaml.MarkedYAMLError) -> str:
    """One line from PyYAML's problem/context pair, e.g. an unclosed bracket names the line it opened on."""
    problem = exc.problem or "malformed YAML"
    if "'\\t'" in problem:
        problem += " (YAML does not allow tabs for indentation: use spaces)"
    if exc.context and exc.context.startswith("while") and exc.context_mark is not None:
        return f"{problem} ({exc.context} started on line {exc.context_mark.line + 1})"
    return f"{exc.context}, {problem}" if exc.context else problem


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Parse config text; `filename` is only used in messages and as Config.source."""
    reader = _Reader(text, filename)
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


Relation = tuple[str, float, str]  # dotted key, its value, how it must relate to the other key


def _check_relations(config: Config, written: dict[str, yaml.Node], reader: _Reader) -> None:
    """Settings that must agree; the error points at the offending key, or at its partner when only that is set."""
    rc, hc = config.reconnect, config.health
    if rc.max_delay < rc.base_delay:
        raise _relation_error(reader, written, ("reconnect.max_delay", rc.max_delay, "must be at least"),
                              ("reconnect.base_delay", rc.base_delay, "must not exceed"))
    if hc.timeout > hc.interval:
        raise _relation_error(reader, written, ("health.timeout", hc.timeout, "must not exceed"),
                              ("health.interval", hc.interval, "must be at least"))


def _relation_error(reader: _Reader, written: dict[str, yaml.Node], offender: Relation,
                    partner: Relation) -> ConfigError:
    key, value, rule = offender
    other_key, other_value, other_rule = partner
    if key in written:
        return reader.fail(written[key], key, f"{rule} {other_key} ({other_value:g}s), got {value:g}s")
    return reader.fail(written.get(other_key), other_key,
                       f"{other_rule} {key} ({value:g}s, the default), got {other_value:g}s")


def _read_config_file(target: Path) -> str:
    """The file's text: a regular file of at most MAX_CONFIG_BYTES, read without blocking (a FIFO cannot hang
    us, /dev/zero cannot fill memory)."""
    try:
        data = trust.read_regular(target, "config file", cap=MAX_CONFIG_BYTES, nofollow=False,
                                  shown=cut(str(target), 300)).data
    except trust.TrustError as exc:
        raise ConfigError(str(exc)) from None
    return data.decode("utf-8")


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate a config file; a missing file is an error only when it was named."""
    explicit = path is not None or bool(os.environ.get("CLAWSVC_CONFIG"))
    target = Path(path) if path is not None else default_config_path()
    try:
        text = _read_config_file(target)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: config file not found") from None
        return Config(source=None)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{cut(str(target), 300)}: cannot read config file: {exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_config(text, str(target))


# ---------------------------------------------------------------- effective config

def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
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
    if redact:
        out["gateway"]["env"] = {key: REDACTED if SECRET_ENV.search(key) else item
                                 for key, item in out["gateway"]["env"].items()}
    return out


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


def gateway_affecting(old: Config, new: Config) -> list[str]:
    """Dotted keys whose change needs the gateway restarted (the rest apply in place)."""
    changed = [f"gateway.{f.name}" for f in fields(GatewayConfig)
               if getattr(old.gateway, f.name) != getattr(new.gateway, f.name)]
    if old.auth != new.auth:
        changed.append("auth.token_file")
    if old.providers != new.providers:
        changed.append("providers")
    if old.connection.path != new.connection.path:
        changed.append("connection.path")
    return changed

