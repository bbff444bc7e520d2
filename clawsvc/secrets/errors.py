"""The errors of clawsvc.secrets: str() is one line and never contains a secret."""

from __future__ import annotations


class SecretError(Exception):
    """A secret that cannot be loaded or stored; str() is one line and never contains the secret."""


class KeyringUnavailable(SecretError):
    """No usable keyring backend (normal on a headless server)."""
