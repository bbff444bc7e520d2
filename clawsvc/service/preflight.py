"""The one validation `run`, `check-config` and a reload share: whatever `run` refuses, `check-config` refuses.

Everything here only looks: it generates no token, starts no keyring child and creates nothing. What `run`
would otherwise find out later (at spawn, or when opening the control socket) is found here first.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

from clawsvc import trust
from clawsvc.config import Config, ConfigError
from clawsvc.config.trusted import check_config_paths
from clawsvc.gateway import compile_cache
from clawsvc.gateway.process import SpawnError, build_argv, build_env, check_command, state_dir, stop_problem
from clawsvc.secrets import describe_token_source


def preflight(config: Config) -> None:
    """Raise ConfigError (exit 78) for anything that would make `run` refuse this config."""
    try:
        check_config_paths(config)
    except trust.TrustError as exc:
        raise ConfigError(str(exc)) from None
    _check_token_file(config)
    _check_command(config)
    _check_state_dir(config)
    _check_compile_cache(config)
    _check_control_group(config)
    if problem := stop_problem(config):
        raise ConfigError(problem)


def _check_token_file(config: Config) -> None:
    """auth.token_file read (without blocking) and judged as `run` would; the keyring is not asked here."""
    if config.auth.token_file is None:
        return
    problem = describe_token_source(config).problem
    if problem:
        raise ConfigError(problem)


def _check_command(config: Config) -> None:
    """The gateway's program and entry script can run this gateway, and are trusted like the config: whoever can
    change them runs code as the service, with its token and keys."""
    try:
        argv = check_command(build_argv(config), build_env(config, "", {}))
    except SpawnError as exc:
        raise ConfigError(str(exc)) from None
    programs = [argv[0]] + [word for word in argv[1:2] if os.path.isabs(word) and os.path.isfile(word)]
    try:
        for program in programs:
            trust.check_file(Path(program), "gateway.command")
    except trust.TrustError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"gateway.command {argv[0]}: cannot check it: {exc.strerror}") from None


def _check_state_dir(config: Config) -> None:
    """gateway.state_dir is a directory, or can be created in its nearest existing ancestor."""
    path = state_dir(config)
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("/"))
    fix = "create it (mode 0700) for the user clawsvc runs as, or set gateway.state_dir"
    if not existing.is_dir():
        raise ConfigError(f"gateway.state_dir {path}: {existing} is not a directory; {fix}")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"gateway.state_dir {path} cannot be created: {existing} is not writable; {fix}")


def _check_compile_cache(config: Config) -> None:
    """gateway.compile_cache refused as `run` would refuse it (one it cannot create only costs a warning there)."""
    try:
        compile_cache.check(config)
    except trust.TrustError as exc:
        raise ConfigError(str(exc)) from None


def _check_control_group(config: Config) -> None:
    group = config.control.group
    if group is None:
        return
    try:
        grp.getgrnam(group)
    except KeyError:
        raise ConfigError(f"control.group: no group named {group!r} on this system; create it or unset "
                          "control.group") from None
