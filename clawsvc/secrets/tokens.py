"""The gateway token: its sources in order, the checks on it, and the one generated under the state dir.

Order: auth.token_file, else the keyring, else $CREDENTIALS_DIRECTORY/gateway-token, else a token generated once
under gateway.state_dir. `find_token` is the only place that order is written: the service loads with it
(generating if absent) and doctor/preflight describe with it (generating, storing and logging nothing).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

from clawsvc import trust
from clawsvc.config import Config
from clawsvc.logs import register_secret
from clawsvc.secrets.errors import SecretError
from clawsvc.secrets.files import CredentialReader, credential, file_errors, secret_value
from clawsvc.secrets.keyring_client import keyring_values

log = logging.getLogger("clawsvc.secrets")

TOKEN_USERNAME = "gateway-token"
TOKEN_CREDENTIAL = "gateway-token"
GENERATED_TOKEN_NAME = trust.GENERATED_TOKEN_NAME
MIN_TOKEN_LENGTH = 6  # shorter values cannot be masked in logs (see logs.register_secret)
WEAK_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class FoundToken:
    token: str
    source: str  # "file PATH", "keyring", "credential gateway-token" or "generated PATH"
    exposure: str | None = None  # a token file other users can read: allowed, but warned about


@dataclass(frozen=True)
class TokenSource:
    source: str  # "file PATH", "keyring", "credential gateway-token", "generated PATH" or "none yet: ..."
    problem: str | None = None  # why the service would refuse to start with it
    warning: str | None = None


def token_usernames(config: Config) -> list[str]:
    """What to ask the keyring for the token: nothing when auth.token_file is set, since that file wins."""
    return [TOKEN_USERNAME] if config.auth.token_file is None else []


@overload
def find_token(config: Config, in_keyring: dict[str, str], generate: Literal[True],
               credentials: CredentialReader = ...) -> FoundToken: ...
@overload
def find_token(config: Config, in_keyring: dict[str, str], generate: Literal[False],
               credentials: CredentialReader = ...) -> FoundToken | None: ...
def find_token(config: Config, in_keyring: dict[str, str], generate: bool,
               credentials: CredentialReader = credential) -> FoundToken | None:
    """The token from the first source that has one; the generated token is created if absent only when
    `generate`, else None stands for "will be generated". `in_keyring` is what the keyring holds; `credentials`
    reads a systemd credential by name (the unit's $CREDENTIALS_DIRECTORY, or as root credstore's files)."""
    token_file = config.auth.token_file
    if token_file is not None:
        token, exposure = _token_file(token_file)
        return FoundToken(token, f"file {token_file}", exposure)
    value = in_keyring.get(TOKEN_USERNAME)
    if value:
        return FoundToken(value, "keyring")
    value = credentials(TOKEN_CREDENTIAL)
    if value is not None:
        return FoundToken(value, f"credential {TOKEN_CREDENTIAL}")
    state_dir = config.gateway.state_dir
    token = _generated_token(state_dir) if generate else _existing_generated_token(state_dir)
    return None if token is None else FoundToken(token, f"generated {state_dir / GENERATED_TOKEN_NAME}")


def _token_verdict(token: str, source: str) -> tuple[str | None, str | None]:
    """(problem, warning) about a token's length; a problem means the service refuses it."""
    if len(token) < MIN_TOKEN_LENGTH:
        return (f"gateway token from {source} is too short to be safe (use at least "
                f"{WEAK_TOKEN_LENGTH} characters)"), None
    if len(token) < WEAK_TOKEN_LENGTH:
        return None, f"gateway token from {source} is short ({len(token)} characters); use at least {WEAK_TOKEN_LENGTH}"
    return None, None


def load_gateway_token(config: Config) -> tuple[str, str]:
    """(token, source): auth.token_file, else keyring, else $CREDENTIALS_DIRECTORY, else generated once."""
    return gateway_token(config, keyring_values(token_usernames(config)))


def gateway_token(config: Config, in_keyring: dict[str, str]) -> tuple[str, str]:
    """(token, source) as the service uses it: SecretError when it is refused, warnings logged."""
    found = find_token(config, in_keyring, generate=True)
    if found.exposure:
        log.warning("%s", found.exposure)
    problem, warning = _token_verdict(found.token, found.source)
    if problem:
        raise SecretError(problem)
    if warning:
        log.warning("%s", warning)
    register_secret(found.token)
    return found.token, found.source


def describe_token_source(config: Config) -> TokenSource:
    """Where load_gateway_token(config) would take the token from; generates, stores and logs nothing."""
    try:
        found = find_token(config, keyring_values(token_usernames(config), quiet=True), generate=False)
    except SecretError as exc:
        return TokenSource("unreadable", problem=str(exc))
    if found is None:
        path = config.gateway.state_dir / GENERATED_TOKEN_NAME
        return TokenSource(f"none yet: will be generated on first start at {path}")
    problem, weak = _token_verdict(found.token, found.source)
    return TokenSource(found.source, problem, weak or found.exposure)


# ---------------------------------------------------------------- the token file and the generated token

def _token_file(path: Path) -> tuple[str, str | None]:
    """(token, warning when other users can read it): that is allowed, only writing or owning it is not."""
    with file_errors(f"cannot read auth.token_file {path}"):
        found = trust.read_secret(path, "auth.token_file")
    exposure = None
    if found.mode & (stat.S_IRWXG | stat.S_IRWXO):
        exposure = (f"auth.token_file {path} is accessible to other users (mode {stat.S_IMODE(found.mode):04o}); "
                    f"run: chmod 600 {path}")
    return secret_value(found, path, "auth.token_file"), exposure


def _stored_token(dir_fd: int, path: Path) -> str | None:
    """The token in the (checked) state dir; None when there is none. A symlink there is refused."""
    what = "generated gateway token"
    with file_errors(f"cannot read {what} {path}"):
        try:
            found = trust.read_secret_at(dir_fd, GENERATED_TOKEN_NAME, path, what)
        except FileNotFoundError:
            return None
    return secret_value(found, path, what)


def _generated_token(state_dir: Path) -> str:
    """The token stored under the state dir, created once (0600, atomically) if absent."""
    path = state_dir / GENERATED_TOKEN_NAME
    with file_errors(f"cannot store a generated gateway token in {path}"):
        dir_fd = trust.open_private_dir(state_dir, "gateway.state_dir")
    try:
        token = _stored_token(dir_fd, path)
        return token if token is not None else _store_new_token(dir_fd, path)
    finally:
        os.close(dir_fd)


def _existing_generated_token(state_dir: Path) -> str | None:
    """The generated token if one is stored; creates, tightens and logs nothing."""
    with file_errors(f"cannot read generated gateway token {state_dir / GENERATED_TOKEN_NAME}"):
        dir_fd = trust.open_dir(state_dir, "gateway.state_dir")
        if dir_fd is None:
            return None
    try:
        return _stored_token(dir_fd, state_dir / GENERATED_TOKEN_NAME)
    finally:
        os.close(dir_fd)


def _store_new_token(dir_fd: int, path: Path) -> str:
    """Write a new token into a temporary file, then link it in place: the first writer wins, readers never
    see a half-written file, and a name already taken (even by a dangling symlink) is never written through."""
    token = secrets.token_urlsafe(32)
    register_secret(token)
    tmp = f".{GENERATED_TOKEN_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    with file_errors(f"cannot store a generated gateway token in {path}"):
        trust.create_secret_at(dir_fd, tmp, (token + "\n").encode())
        try:
            os.link(tmp, GENERATED_TOKEN_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            theirs = _stored_token(dir_fd, path)
            if theirs is None:
                raise
            return theirs
        finally:
            os.unlink(tmp, dir_fd=dir_fd)
    log.info("generated a new gateway token and stored it in %s (mode 0600)", path)
    return token
