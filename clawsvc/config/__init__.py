"""YAML config file -> frozen, typed Config; every error names file:line and the dotted key.

model: the Config dataclasses and defaults; reader: bounded YAML reading; loader: schema, parse_config,
load_config; render: to_dict, dump, gateway_affecting; values: the parsers of single settings."""

from clawsvc.config.loader import SCHEMA, load_config, parse_config
from clawsvc.config.model import (
    DEFAULT_PROVIDERS,
    NO_RESPAWN,
    REDACTED,
    SECRET_ENV,
    SYSTEM_CONTROL_SOCKET,
    AuthConfig,
    Config,
    ConfigError,
    ConnectionConfig,
    ControlConfig,
    GatewayConfig,
    HealthConfig,
    LoggingConfig,
    ReconnectConfig,
    default_compile_cache,
    default_config_path,
    default_control_socket,
    default_state_dir,
    fresh_process_restarts,
    user_state_root,
)
from clawsvc.config.reader import MAX_CHARS, MAX_CONFIG_BYTES, MAX_DEPTH, MAX_NODES
from clawsvc.config.render import PRINT_MAX, dump, gateway_affecting, to_dict

__all__ = [
    "DEFAULT_PROVIDERS",
    "MAX_CHARS",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "NO_RESPAWN",
    "PRINT_MAX",
    "REDACTED",
    "SCHEMA",
    "SECRET_ENV",
    "SYSTEM_CONTROL_SOCKET",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConnectionConfig",
    "ControlConfig",
    "GatewayConfig",
    "HealthConfig",
    "LoggingConfig",
    "ReconnectConfig",
    "default_compile_cache",
    "default_config_path",
    "default_control_socket",
    "default_state_dir",
    "dump",
    "fresh_process_restarts",
    "gateway_affecting",
    "load_config",
    "parse_config",
    "to_dict",
    "user_state_root",
]
