"""Provider API keys: the environment variables OpenClaw reads, where the keys are found, and managing them in the
keyring (`clawsvc keys`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from clawsvc.config import Config
from clawsvc.secrets.errors import KeyringUnavailable, SecretError
from clawsvc.secrets.files import EMPTY, NOT_ONE_WORD, CredentialReader, credential, single_value
from clawsvc.secrets.keyring_client import keyring_child, keyring_values

log = logging.getLogger("clawsvc.secrets")

# provider -> the environment variable OpenClaw 2026.9 reads (its docs/providers/*.md); others get NAME_API_KEY.
PROVIDER_ENV: dict[str, str] = {
    "anthropic": "ANTHROPIC_API_KEY",
    "openai": "OPENAI_API_KEY",
    "google": "GEMINI_API_KEY",  # OpenClaw accepts GEMINI_API_KEY or GOOGLE_API_KEY for google/*
    "openrouter": "OPENROUTER_API_KEY",
    "xai": "XAI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "groq": "GROQ_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
    "together": "TOGETHER_API_KEY",
    "cerebras": "CEREBRAS_API_KEY",
    "fireworks": "FIREWORKS_API_KEY",
    "moonshot": "MOONSHOT_API_KEY",
    "perplexity": "PERPLEXITY_API_KEY",
    "cohere": "COHERE_API_KEY",
}


def provider_env_name(provider: str) -> str:
    return PROVIDER_ENV.get(provider, provider.upper().replace("-", "_") + "_API_KEY")


def provider_credential(provider: str) -> str:
    """The systemd credential (in $CREDENTIALS_DIRECTORY) holding the provider's key."""
    return f"{provider}-api-key"


def _provider_key(provider: str, in_keyring: dict[str, str], credentials: CredentialReader) -> tuple[str, str] | None:
    if provider in in_keyring:
        return in_keyring[provider], "keyring"
    name = provider_credential(provider)
    value = credentials(name)
    if value is not None:
        return value, f"credential {name}"
    return None


def provider_keys(config: Config, in_keyring: dict[str, str] | None = None,
                  credentials: CredentialReader = credential) -> dict[str, tuple[str, str]]:
    """{provider: (key, source)} for the configured providers with a key: keyring, else the credential
    <provider>-api-key ($CREDENTIALS_DIRECTORY, see find_token). The keyring is read once for all of them."""
    if in_keyring is None:
        in_keyring = keyring_values(config.providers)
    keys = {p: _provider_key(p, in_keyring, credentials) for p in config.providers}
    return {p: key for p, key in keys.items() if key is not None}


def provider_env(config: Config) -> dict[str, str]:
    """{"ANTHROPIC_API_KEY": ...} for each configured provider whose key was found."""
    return env_from(config, keyring_values(config.providers))


def env_from(config: Config, in_keyring: dict[str, str]) -> dict[str, str]:
    """provider_env(config) with the keyring already read; logs which keys were found where, or that none was."""
    keys = provider_keys(config, in_keyring)
    env = {provider_env_name(p): key for p, (key, _) in keys.items()}
    missing = [p for p in config.providers if p not in keys]
    if config.providers and not keys:
        log.warning("no provider API key found for %s: the gateway starts but cannot call a model; store one "
                    "with `clawsvc keys set PROVIDER` or pass LoadCredential=PROVIDER-api-key:FILE, then "
                    "`systemctl restart clawsvc` (a credential reaches the unit only when it starts)",
                    ", ".join(config.providers))
    elif keys:
        log.info("provider API keys: %s%s", ", ".join(f"{p} ({source})" for p, (_, source) in keys.items()),
                 f"; none for {', '.join(missing)}" if missing else "")
    return env


# ---------------------------------------------------------------- `clawsvc keys`: the keyring only

def _managing(op: str, usernames: Sequence[str], value: str | None = None) -> dict[str, Any]:
    try:
        return keyring_child(op, usernames, value)
    except KeyringUnavailable as exc:
        raise KeyringUnavailable(f"{exc}; on a headless server store the key as an encrypted systemd credential "
                                 "instead: sudo clawsvc keys set NAME --store credential") from None


def require_keyring() -> None:
    _managing("status", ())


def clean_value(name: str, value: str) -> str:
    """The key as it is stored: what clawsvc reads back from a keyring or credential (files.single_value)."""
    value, problem = single_value(value)
    if problem == EMPTY:
        raise SecretError(f"empty key for {name}: nothing stored")
    if problem == NOT_ONE_WORD:
        raise SecretError(f"the key for {name} contains whitespace: paste the key alone, on one line")
    return value


def set_key(provider: str, value: str) -> None:
    _managing("set", [provider], clean_value(provider, value))


def delete_key(provider: str) -> bool:
    """Remove a stored key; False when none was stored."""
    return bool(_managing("delete", [provider])["deleted"])


def stored_providers(config: Config) -> list[str]:
    """Configured providers that have a key in the keyring."""
    stored = in_keyring(config.providers)
    return [p for p in config.providers if p in stored]


def in_keyring(usernames: Sequence[str]) -> set[str]:
    """Which of `usernames` have a key in the keyring; KeyringUnavailable when it has no usable backend."""
    values = _managing("get", usernames)["values"]
    return {name for name in usernames if values.get(name)}
