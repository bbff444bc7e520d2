"""Gateway token and provider API keys from the keyring, systemd credentials and files.

Every secret this module returns has been passed to `register_secret()`, so no later log line shows it.
Every keyring call runs in a short-lived child (clawsvc.secrets.keyring_child), killed at KEYRING_TIMEOUT: the
service never imports `keyring` (~13 MiB for good), and a Secret Service that never answers (a locked
collection waiting for a GUI prompt on a headless box) cannot hang it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc import trust
from clawsvc.config import Config
from clawsvc.logs import redact, register_secret
from clawsvc.text import cut

log = logging.getLogger("clawsvc.secrets")

KEYRING_SERVICE = "clawsvc"
TOKEN_USERNAME = "gateway-token"
TOKEN_CREDENTIAL = "gateway-token"
GENERATED_TOKEN_NAME = trust.GENERATED_TOKEN_NAME
KEYRING_TIMEOUT = 10.0
MIN_TOKEN_LENGTH = 6  # shorter values cannot be masked in logs (see logs.register_secret)
WEAK_TOKEN_LENGTH = 16

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


class SecretError(Exception):
    """A secret that cannot be loaded or stored; str() is one line and never contains the secret."""


class KeyringUnavailable(SecretError):
    """No usable keyring backend (normal on a headless server)."""


def provider_env_name(provider: str) -> str:
    return PROVIDER_ENV.get(provider, provider.upper().replace("-", "_") + "_API_KEY")


# ---------------------------------------------------------------- keyring access in a child process

class _KeyringState:
    lock = threading.Lock()
    broken: str | None = None  # why the keyring is unusable for the rest of this process
    warned = False


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return cut(redact(lines[-1].strip()), 200) if lines else ""


PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the directory holding the clawsvc package


def _keyring_child(op: str, usernames: Sequence[str] = (), value: str | None = None) -> dict[str, Any]:
    """Runs one operation in clawsvc.secrets.keyring_child; KeyringUnavailable when the keyring cannot serve it."""
    if _KeyringState.broken:
        raise KeyringUnavailable(_KeyringState.broken)
    request = json.dumps({"op": op, "service": KEYRING_SERVICE, "usernames": list(usernames), "value": value})
    command = [sys.executable, "-m", "clawsvc.secrets.keyring_child"]
    try:
        # `-m` puts the working directory first on sys.path: run from the one holding this very clawsvc, so
        # a keyring.py lying in the caller's directory (say /tmp) can never see the keys
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True, cwd=PACKAGE_PARENT)
    except OSError as exc:
        raise KeyringUnavailable(f"cannot start {' '.join(command)}: {exc.strerror or exc}") from None
    with child:
        try:
            out, err = child.communicate(request.encode(), timeout=KEYRING_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # the whole group: a D-Bus helper it started goes too
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.communicate(timeout=KEYRING_TIMEOUT)
            _KeyringState.broken = (f"the keyring did not answer within {KEYRING_TIMEOUT:g}s "
                                    "(a locked or unreachable Secret Service?)")
            raise KeyringUnavailable(_KeyringState.broken) from None
    try:
        reply: dict[str, Any] = json.loads(out)
    except ValueError:
        why = _last_line(err.decode(errors="replace"))
        raise KeyringUnavailable(f"the keyring helper ({' '.join(command)}) failed with "
                                 f"exit status {child.returncode}{': ' + why if why else ''}") from None
    for found in reply["values"].values():
        if found:
            register_secret(found)
    if reply["error"]:
        raise KeyringUnavailable(reply["error"])
    return reply


def keyring_status() -> tuple[bool, str]:
    """(usable, backend description); no backend on a headless box is normal, not an error."""
    try:
        return True, _keyring_child("status")["backend"]
    except KeyringUnavailable as exc:
        return False, str(exc)


def _keyring_values(usernames: Sequence[str]) -> dict[str, str]:
    """The stored values found, all in one child; {} when the keyring is unusable (warned about once)."""
    if not usernames:
        return {}
    try:
        values = _keyring_child("get", usernames)["values"]
    except KeyringUnavailable as exc:
        with _KeyringState.lock:
            first, _KeyringState.warned = not _KeyringState.warned, True
        if first:
            log.warning("keyring not used: %s; reading secrets from $CREDENTIALS_DIRECTORY and files instead "
                        "(auth.token_file, else a token generated under gateway.state_dir)", exc)
        return {}
    return {name: found for name, found in values.items() if found}


# ---------------------------------------------------------------- files and credentials

@contextlib.contextmanager
def _file_errors(failing: str) -> Iterator[None]:
    """The one place problems with a secret file or the state dir become a SecretError (exit 78 at start)."""
    try:
        yield
    except trust.TrustError as exc:
        raise SecretError(str(exc)) from None
    except OSError as exc:
        raise SecretError(f"{failing}: {exc.strerror or exc.__class__.__name__}") from None


def _value(found: trust.SecretFile, path: Path, what: str) -> str:
    value = found.text.strip()
    if not value:
        raise SecretError(f"{what} {path} is empty")
    if any(ch.isspace() for ch in value):
        raise SecretError(f"{what} {path} must hold a single value on one line")
    register_secret(value)
    return value


def _read_secret_file(path: Path, what: str) -> str:
    with _file_errors(f"cannot read {what} {path}"):
        found = trust.read_secret(path, what)
    return _value(found, path, what)


def _credential(name: str) -> tuple[str, Path] | None:
    """$CREDENTIALS_DIRECTORY/<name> (systemd LoadCredential=), if present."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    if not os.path.lexists(path):
        return None
    return _read_secret_file(path, f"credential {name}"), path


def _token_verdict(token: str, source: str) -> tuple[str | None, str | None]:
    """(problem, warning) about a token's length; a problem means the service refuses it."""
    if len(token) < MIN_TOKEN_LENGTH:
        return (f"gateway token from {source} is too short to be safe (use at least "
                f"{WEAK_TOKEN_LENGTH} characters)"), None
    if len(token) < WEAK_TOKEN_LENGTH:
        return None, f"gateway token from {source} is short ({len(token)} characters); use at least {WEAK_TOKEN_LENGTH}"
    return None, None


def _check_token(token: str, source: str) -> str:
    problem, warning = _token_verdict(token, source)
    if problem:
        raise SecretError(problem)
    if warning:
        log.warning("%s", warning)
    register_secret(token)
    return token


def _token_file(path: Path) -> tuple[str, str | None]:
    """(token, warning when other users can read it): that is allowed, only writing or owning it is not."""
    with _file_errors(f"cannot read auth.token_file {path}"):
        found = trust.read_secret(path, "auth.token_file")
    exposure = None
    if found.mode & (stat.S_IRWXG | stat.S_IRWXO):
        exposure = (f"auth.token_file {path} is accessible to other users (mode {stat.S_IMODE(found.mode):04o}); "
                    f"run: chmod 600 {path}")
    return _value(found, path, "auth.token_file"), exposure


def _stored_token(dir_fd: int, path: Path) -> str | None:
    """The token in the (checked) state dir; None when there is none. A symlink there is refused."""
    what = "generated gateway token"
    with _file_errors(f"cannot read {what} {path}"):
        try:
            found = trust.read_secret_at(dir_fd, GENERATED_TOKEN_NAME, path, what)
        except FileNotFoundError:
            return None
    return _value(found, path, what)


def _generated_token(state_dir: Path) -> tuple[str, Path]:
    """The token stored under the state dir, created once (0600, atomically) if absent."""
    path = state_dir / GENERATED_TOKEN_NAME
    with _file_errors(f"cannot store a generated gateway token in {path}"):
        dir_fd = trust.open_private_dir(state_dir, "gateway.state_dir")
    try:
        token = _stored_token(dir_fd, path)
        return (token, path) if token is not None else (_store_new_token(dir_fd, path), path)
    finally:
        os.close(dir_fd)


def _existing_generated_token(state_dir: Path) -> str | None:
    """The generated token if one is stored; creates, tightens and logs nothing."""
    with _file_errors(f"cannot read generated gateway token {state_dir / GENERATED_TOKEN_NAME}"):
        resolved = trust.check_dir(state_dir, "gateway.state_dir")
        if resolved is None:
            return None
        dir_fd = os.open(resolved, trust.DIR_FLAGS)
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
    with _file_errors(f"cannot store a generated gateway token in {path}"):
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


# ---------------------------------------------------------------- public API

def load_gateway_token(config: Config) -> tuple[str, str]:
    """(token, source): auth.token_file, else keyring, else $CREDENTIALS_DIRECTORY, else generated once."""
    in_keyring = _keyring_values([TOKEN_USERNAME]) if config.auth.token_file is None else {}
    return _gateway_token(config, in_keyring)


def load_all(config: Config) -> tuple[str, str, dict[str, str]]:
    """(token, its source, provider env) with one keyring child for all of them: what a (re)load needs."""
    wanted = [*([TOKEN_USERNAME] if config.auth.token_file is None else []), *config.providers]
    in_keyring = _keyring_values(wanted)
    token, source = _gateway_token(config, in_keyring)
    return token, source, _provider_env(config, in_keyring)


def _gateway_token(config: Config, in_keyring: dict[str, str]) -> tuple[str, str]:
    token_file = config.auth.token_file
    if token_file is not None:
        token, exposure = _token_file(token_file)
        if exposure:
            log.warning("%s", exposure)
        source = f"file {token_file}"
        return _check_token(token, source), source
    value = in_keyring.get(TOKEN_USERNAME)
    if value is not None:
        return _check_token(value, "keyring"), "keyring"
    found = _credential(TOKEN_CREDENTIAL)
    if found is not None:
        source = f"credential {TOKEN_CREDENTIAL}"
        return _check_token(found[0], source), source
    token, path = _generated_token(config.gateway.state_dir)
    source = f"generated {path}"
    return _check_token(token, source), source


@dataclass(frozen=True)
class TokenSource:
    source: str  # "file PATH", "keyring", "credential gateway-token", "generated PATH" or "none yet: ..."
    problem: str | None = None  # why the service would refuse to start with it
    warning: str | None = None


def _token_source(token: str, source: str, warning: str | None = None) -> TokenSource:
    problem, weak = _token_verdict(token, source)
    return TokenSource(source, problem, weak or warning)


def describe_token_source(config: Config) -> TokenSource:
    """Where load_gateway_token(config) would take the token from; generates, stores and logs nothing."""
    token_file = config.auth.token_file
    try:
        if token_file is not None:
            value, exposure = _token_file(token_file)
            return _token_source(value, f"file {token_file}", exposure)
        try:
            value = _keyring_child("get", [TOKEN_USERNAME])["values"].get(TOKEN_USERNAME)
        except KeyringUnavailable:
            value = None  # the service falls through to the next source the same way
        if value:
            return _token_source(value, "keyring")
        found = _credential(TOKEN_CREDENTIAL)
        if found is not None:
            return _token_source(found[0], f"credential {TOKEN_CREDENTIAL}")
        path = config.gateway.state_dir / GENERATED_TOKEN_NAME
        value = _existing_generated_token(config.gateway.state_dir)
        if value is not None:
            return _token_source(value, f"generated {path}")
        return TokenSource(f"none yet: will be generated on first start at {path}")
    except SecretError as exc:
        return TokenSource("unreadable", problem=str(exc))


def _provider_key(provider: str, in_keyring: dict[str, str]) -> tuple[str, str] | None:
    if provider in in_keyring:
        return in_keyring[provider], "keyring"
    found = _credential(f"{provider}-api-key")
    if found is not None:
        return found[0], f"credential {provider}-api-key"
    return None


def provider_keys(config: Config, in_keyring: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """{provider: (key, source)} for the configured providers with a key: keyring, else
    $CREDENTIALS_DIRECTORY/<provider>-api-key. The keyring is read once for all of them."""
    if in_keyring is None:
        in_keyring = _keyring_values(config.providers)
    keys = {p: _provider_key(p, in_keyring) for p in config.providers}
    return {p: key for p, key in keys.items() if key is not None}


def provider_env(config: Config) -> dict[str, str]:
    """{"ANTHROPIC_API_KEY": ...} for each configured provider whose key was found."""
    return _provider_env(config, _keyring_values(config.providers))


def _provider_env(config: Config, in_keyring: dict[str, str]) -> dict[str, str]:
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


def _managing(op: str, usernames: Sequence[str], value: str | None = None) -> dict[str, Any]:
    try:
        return _keyring_child(op, usernames, value)
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
