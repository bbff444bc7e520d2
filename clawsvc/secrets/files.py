"""Secret files and systemd credentials, read through clawsvc.trust: owner and mode checked, never blocking."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from clawsvc import trust
from clawsvc.logs import register_secret
from clawsvc.secretrule import EMPTY, NOT_ONE_WORD, one_word
from clawsvc.secrets.errors import SecretError


@contextlib.contextmanager
def file_errors(failing: str) -> Iterator[None]:
    """The one place problems with a secret file or the state dir become a SecretError (exit 78 at start)."""
    try:
        yield
    except trust.TrustError as exc:
        raise SecretError(str(exc)) from None
    except OSError as exc:
        raise SecretError(f"{failing}: {exc.strerror or exc.__class__.__name__}") from None


def single_value(text: str) -> tuple[str, str | None]:
    """What a secret is, wherever it is read or stored (secretrule.one_word); a good value is registered for
    redaction."""
    value, problem = one_word(text)
    if problem is None:
        register_secret(value)
    return value, problem


def secret_value(found: trust.SecretFile, path: Path, what: str) -> str:
    """The single value a secret file holds, registered for redaction; SecretError when it holds none."""
    value, problem = single_value(found.text)
    if problem == EMPTY:
        raise SecretError(f"{what} {path} is empty")
    if problem == NOT_ONE_WORD:
        raise SecretError(f"{what} {path} must hold a single value on one line")
    return value


def read_secret_file(path: Path, what: str) -> str:
    with file_errors(f"cannot read {what} {path}"):
        found = trust.read_secret(path, what)
    return secret_value(found, path, what)


CredentialReader = Callable[[str], "str | None"]  # a credential's name -> its value, None when there is none


def credential(name: str) -> str | None:
    """The value of $CREDENTIALS_DIRECTORY/<name> (systemd LoadCredential=), if present."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    if not os.path.lexists(path):
        return None
    return read_secret_file(path, f"credential {name}")
