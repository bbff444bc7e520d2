"""What counts as a secret: an environment name that looks like one, and what a secret value may be."""

from __future__ import annotations

SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSW", "CREDENTIAL")
EMPTY, NOT_ONE_WORD = "empty", "not one word"


def is_secret_name(name: str) -> bool:
    """Whether an environment variable's name says its value is a secret (never shown, never written down)."""
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def one_word(text: str) -> tuple[str, str | None]:
    """The text without surrounding whitespace: (value, None) when it is one word, else (value, EMPTY |
    NOT_ONE_WORD)."""
    value = text.strip()
    if not value:
        return value, EMPTY
    if any(ch.isspace() for ch in value):
        return value, NOT_ONE_WORD
    return value, None
