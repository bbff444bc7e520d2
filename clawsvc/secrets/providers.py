"""Provider API keys: the environment variables OpenClaw reads, where the keys are found, and managing them in the
keyring (`clawsvc keys`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from clawsvc.config import Config
from clawsvc.logs import register_secret
from clawsvc.secrets.errors import KeyringUnavailable, SecretError
from clawsvc.secrets.files import credential
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


def _provider_key(provider: str, in_keyring: dict[str, str]) -> tuple[str, str] | None:
    if provider in in_keyring:
        return in_keyring[provider], "keyring"
    value = credential(f"{provider}-api-key")
    if value is not None:
        return value, f"credential {provider}-api-key"
    return None


def provider_keys(config: Config, in_keyring: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """{provider: (key, source)} for the configured providers with a key: keyring, else
    $CREDENTIALS_DIRECTORY/<provider>-api-key. The keyring is read once for all of them."""
    if in_keyring is None:
        in_keyring = keyring_values(config.providers)
    keys = {p: _provider_key(p, in_keyring) for p in config.providers}
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
                    "`systemctl reload clawsvc`", ", ".join(config.providers))
    elif keys:
        log.info("provider API keys: %s%s", ", ".join(f"{p} ({source})" for p, (_, source) in keys.items()),
                 f"; none for {', '.join(missing)}" if missing else "")
    return env


# ---------------------------------------------------------------- `clawsvc keys`: the keyring only

def _managing(op: str, usernames: Sequence[str], value: str | None = None) -> dict[str, Any]:
    try:
        return keyring_child(op, usernames, value)
    except KeyringUnavailable as exc:
        raise KeyringUnavailable(f"{exc}; on a headless server put the key in a systemd credential "
                                 "instead (LoadCredential=<provider>-api-key:/path/to/file)") from None


def require_keyring() -> None:
    _managing("status", ())


def set_key(provider: str, value: str) -> None:
    value = value.strip()
    if not value:
        raise SecretError(f"empty key for {provider}: nothing stored")
    register_secret(value)
    _managing("set", [provider], value)


def delete_key(provider: str) -> bool:
    """Remove a stored key; False when none was stored."""
    return bool(_managing("delete", [provider])["deleted"])


def stored_providers(config: Config) -> list[str]:
    """Configured providers that have a key in the keyring."""
    values = _managing("get", config.providers)["values"]
    return [p for p in config.providers if values.get(p)]
