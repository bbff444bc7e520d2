"""`clawsvc keys set|delete|list`: provider API keys and the gateway token in the system keyring, or (headless
servers) as encrypted systemd credentials of the unit (clawsvc.secrets.credstore). A value is never printed."""

from __future__ import annotations

import argparse
import getpass
import re
import sys

from clawsvc import exitcodes, trust
from clawsvc.commands.servicectl import ServiceCtlError, systemctl
from clawsvc.config import Config, ConfigError, load_config
from clawsvc.config.instances import unit_name
from clawsvc.secrets import (
    KeyringUnavailable,
    SecretError,
    credstore,
    delete_key,
    describe_token_source,
    keyring_status,
    provider_env_name,
    require_keyring,
    set_key,
)
from clawsvc.secrets.providers import clean_value, in_keyring
from clawsvc.secrets.tokens import MIN_TOKEN_LENGTH, TOKEN_USERNAME, WEAK_TOKEN_LENGTH
from clawsvc.text import shown

PROVIDER_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")  # also a file name: <provider>-api-key
MAX_VALUE = trust.SECRET_CAP  # clawsvc reads no bigger key back (a credential or a token file)


def _err(message: str) -> None:
    print(f"clawsvc keys: {message}", file=sys.stderr)


def _what(name: str) -> str:
    return "the gateway token" if name == TOKEN_USERNAME else f"the API key for {name}"


def _read_value(name: str) -> str:
    """One line from stdin when piped, else a no-echo prompt on the terminal."""
    if sys.stdin is None:
        raise SecretError("no stdin to read the key from")
    if sys.stdin.isatty():
        label = "gateway token" if name == TOKEN_USERNAME else f"API key for {name}"
        try:
            return getpass.getpass(f"{label} (input hidden): ")
        except UnicodeDecodeError:
            raise SecretError("the key typed is not UTF-8 text: nothing stored") from None
    raw = sys.stdin.buffer.readline(MAX_VALUE + 1)
    if len(raw) > MAX_VALUE:
        raise SecretError(f"the first line on stdin is longer than {MAX_VALUE // 1024} KiB, which is no key: "
                          "nothing stored; pipe the key alone, on one line")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError("the key on stdin is not UTF-8 text: nothing stored; pipe the key alone, on one line"
                          ) from None


def _value(name: str) -> str:
    value = clean_value(name, _read_value(name))
    if name == TOKEN_USERNAME and len(value) < MIN_TOKEN_LENGTH:
        raise SecretError(f"a gateway token of {len(value)} characters is refused by clawsvc: use at least "
                          f"{WEAK_TOKEN_LENGTH} (e.g. from `openssl rand -base64 32`)")
    if name == TOKEN_USERNAME and len(value) < WEAK_TOKEN_LENGTH:
        _err(f"warning: a gateway token of {len(value)} characters is weak; use at least {WEAK_TOKEN_LENGTH}")
    return value


def _store_for(choice: str) -> str:
    """"keyring" or "credential" for --store CHOICE; SecretError (one line, with the fix) when it is unusable."""
    if choice == "keyring":
        require_keyring()
        return "keyring"
    why_not = credstore.unusable_reason()
    if choice == "credential":
        if why_not:
            raise SecretError(f"cannot store an encrypted credential: {why_not}")
        return "credential"
    usable, backend = keyring_status()
    if usable:
        return "keyring"
    if why_not:
        raise SecretError(f"{backend}, and {why_not} to store it as an encrypted systemd credential")
    return "credential"


def _reload_units() -> None:
    """Have systemd read the changed drop-in; skipped when these are not the running system's files."""
    if not credstore.live_root():
        return
    try:
        systemctl(False, "daemon-reload")
    except ServiceCtlError as exc:
        _err(f"warning: {exc}; run `systemctl daemon-reload` before restarting the unit")


def _set(config: Config, name: str, choice: str, unit: str) -> int:
    store = _store_for(choice)  # before prompting for a value that could not be stored
    value = _value(name)
    env = "" if name == TOKEN_USERNAME else f" as {provider_env_name(name)}"
    if store == "keyring":
        set_key(name, value)
        print(f"stored {_what(name)} in the keyring; clawsvc passes it to the gateway{env} "
              f"after `systemctl reload {unit}` (the gateway is restarted with it)")
    else:
        path = credstore.store(unit, credstore.credential_name(name), value)
        _reload_units()
        print(f"stored {_what(name)} encrypted in {path} (loaded by {credstore.dropin_path(unit)})")
        print(f"next: `systemctl restart {unit}` delivers it to the gateway{env}; credentials are set up "
              "when the unit starts, so a reload does not")
    if name != TOKEN_USERNAME and name not in config.providers:
        _err(f"note: {name} is not listed under providers: in {config.source or 'the config'}, "
             "so clawsvc will not export it until you add it")
    return exitcodes.OK


def _delete(name: str, unit: str) -> int:
    removed: list[str] = []
    unchecked: list[str] = []
    try:
        if delete_key(name):
            removed.append("the keyring")
    except KeyringUnavailable:
        pass  # no backend: nothing can be stored there
    try:
        path = credstore.delete(unit, credstore.credential_name(name))
    except credstore.CredstoreError as exc:
        unchecked.append(f"the credentials of {unit} were not checked: {exc}")
    else:
        if path is not None:
            _reload_units()
            removed.append(str(path))
    if not removed:
        _err(f"no key for {name} is stored in the keyring or in the credentials of {unit}"
             if not unchecked else f"no key for {name} in the keyring; {unchecked[0]}")
        return exitcodes.FAIL
    print(f"deleted {_what(name)} from {' and '.join(removed)}")
    if len(removed) > 1 or removed[0] != "the keyring":
        print(f"next: `systemctl restart {unit}` takes it away from the running gateway")
    for line in unchecked:
        _err(f"note: {line}")
    return exitcodes.OK


def _list(config: Config, unit: str) -> int:
    names = [*config.providers, TOKEN_USERNAME]
    usable, backend = keyring_status()
    keyring = in_keyring(names) if usable else set()
    print(f"keyring: {backend}" if usable else f"keyring: none ({backend})")
    try:
        credentials = credstore.stored_credentials(unit)
        print(f"credentials: {credstore.credential_dir(unit)} (unit {unit})")
    except credstore.CredstoreError as exc:
        credentials = None
        print(f"credentials: not checked ({exc})")
    names += [n for n in map(credstore.key_name, credentials or {}) if n not in names]
    width = max(len(n) for n in names)
    for name in names:
        where = []
        if name in keyring:
            where.append("keyring")
        path = (credentials or {}).get(credstore.credential_name(name))
        if path is not None:
            where.append(f"credential {path}")
        shown = "both: " + ", ".join(where) if len(where) == 2 else (where[0] if where else "not stored")
        if not where and credentials is None:
            shown = "not in the keyring; credentials not checked"
        if not where and name == TOKEN_USERNAME:
            shown = _token_elsewhere(config)
        env = "-" if name == TOKEN_USERNAME else provider_env_name(name)
        print(f"{name:<{width}}  {env:<24}  {shown}")
    return exitcodes.OK


def _token_elsewhere(config: Config) -> str:
    """Where the token comes from when neither store has it: auth.token_file, or the one the service generated."""
    with trust.judged_as_the_service():
        return describe_token_source(config).source


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        _err(str(exc))
        return exitcodes.CONFIG
    name = getattr(args, "provider", None)
    if name is not None and not PROVIDER_NAME.fullmatch(name):
        _err(f"{shown(name)} is not a provider name (up to 64 lowercase letters, digits, - and _) or "
             "gateway-token")
        return exitcodes.USAGE
    unit = unit_name(getattr(args, "instance", None))
    try:
        if args.keys_command == "set":
            return _set(config, name, args.store, unit)
        if args.keys_command == "delete":
            return _delete(name, unit)
        return _list(config, unit)
    except (SecretError, EOFError) as exc:
        _err(str(exc) or "no key entered")
        return exitcodes.FAIL
