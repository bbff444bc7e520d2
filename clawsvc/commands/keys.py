"""`clawsvc keys set|delete|list`: provider API keys in the system keyring; a value is never printed."""

from __future__ import annotations

import argparse
import getpass
import re
import sys

from clawsvc import exitcodes
from clawsvc.config import Config, ConfigError, load_config
from clawsvc.secrets import (
    SecretError,
    delete_key,
    keyring_status,
    provider_env_name,
    require_keyring,
    set_key,
    stored_providers,
)

PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def _err(message: str) -> None:
    print(f"clawsvc keys: {message}", file=sys.stderr)


def _read_value(provider: str) -> str:
    """One line from stdin when piped, else a no-echo prompt on the terminal."""
    if sys.stdin is None:
        raise SecretError("no stdin to read the key from")
    if sys.stdin.isatty():
        return getpass.getpass(f"API key for {provider} (input hidden): ")
    return sys.stdin.readline()


def _set(config: Config, provider: str) -> int:
    require_keyring()  # before prompting for a value that could not be stored
    set_key(provider, _read_value(provider))
    print(f"stored the API key for {provider} in the keyring; clawsvc exports it as {provider_env_name(provider)} "
          "after `systemctl reload clawsvc` (the gateway is restarted with it)")
    if provider not in config.providers:
        _err(f"note: {provider} is not listed under providers: in {config.source or 'the config'}, "
             "so clawsvc will not export it until you add it")
    return exitcodes.OK


def _delete(provider: str) -> int:
    if not delete_key(provider):
        _err(f"no API key for {provider} is stored in the keyring")
        return exitcodes.FAIL
    print(f"deleted the API key for {provider} from the keyring")
    return exitcodes.OK


def _list(config: Config) -> int:
    stored = set(stored_providers(config))
    _, backend = keyring_status()
    print(f"keyring: {backend}")
    width = max((len(p) for p in config.providers), default=8)
    for provider in config.providers:
        state = "stored" if provider in stored else "not stored"
        print(f"{provider:<{width}}  {provider_env_name(provider):<24}  {state}")
    return exitcodes.OK


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _err(str(exc))
        return exitcodes.CONFIG
    provider = getattr(args, "provider", None)
    if provider is not None and not PROVIDER_NAME.fullmatch(provider):
        _err(f"{provider!r} is not a provider name (lowercase letters, digits, - and _)")
        return exitcodes.USAGE
    try:
        if args.keys_command == "set":
            return _set(config, provider)
        if args.keys_command == "delete":
            return _delete(provider)
        return _list(config)
    except (SecretError, EOFError) as exc:
        _err(str(exc) or "no key entered")
        return exitcodes.FAIL
