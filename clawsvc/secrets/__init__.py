"""Gateway token and provider API keys from the keyring, systemd credentials and files.

Every secret this package returns has been passed to `register_secret()`, so no later log line shows it.
Parts: `tokens` (the gateway token and the one order of its sources), `providers` (provider API keys and
`clawsvc keys`), `keyring_client` (every keyring call, in a child killed at KEYRING_TIMEOUT: the service never
imports `keyring`), `keyring_child` (that child), `files` (secret files and $CREDENTIALS_DIRECTORY).
"""

from __future__ import annotations

from clawsvc.config import Config
from clawsvc.secrets.errors import KeyringUnavailable, SecretError
from clawsvc.secrets.keyring_client import keyring_status, keyring_values
from clawsvc.secrets.providers import (
    PROVIDER_ENV,
    delete_key,
    env_from,
    provider_env,
    provider_env_name,
    provider_keys,
    require_keyring,
    set_key,
    stored_providers,
)
from clawsvc.secrets.tokens import (
    TokenSource,
    describe_token_source,
    find_token,
    gateway_token,
    load_gateway_token,
    token_usernames,
)

__all__ = [
    "PROVIDER_ENV",
    "KeyringUnavailable",
    "SecretError",
    "TokenSource",
    "cli_secrets",
    "delete_key",
    "describe_token_source",
    "keyring_status",
    "load_all",
    "load_gateway_token",
    "provider_env",
    "provider_env_name",
    "provider_keys",
    "require_keyring",
    "set_key",
    "stored_providers",
]


def load_all(config: Config) -> tuple[str, str, dict[str, str]]:
    """(token, its source, provider env) with one keyring child for all of them: what a (re)load needs."""
    in_keyring = keyring_values([*token_usernames(config), *config.providers])
    token, source = gateway_token(config, in_keyring)
    return token, source, env_from(config, in_keyring)


def cli_secrets(config: Config, unit: str) -> tuple[str | None, dict[str, str]]:
    """(token, provider env) as the unit's gateway gets them, for its CLI run from outside the unit: the same
    sources in the same order, the unit's encrypted credentials decrypted as root; nothing generated or logged.
    The token is None before the service's first start generated one."""
    from clawsvc.secrets import credstore  # it imports this package's modules

    read = credstore.reader(unit)
    in_keyring = keyring_values([*token_usernames(config), *config.providers], quiet=True)
    found = find_token(config, in_keyring, generate=False, credentials=read)
    keys = provider_keys(config, in_keyring, read)
    return (found.token if found else None), {provider_env_name(p): key for p, (key, _) in keys.items()}
