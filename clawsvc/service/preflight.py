"""The one validation `run`, `check-config`, a reload and `doctor` share: whatever `run` refuses, `check-config`
refuses, and `doctor` reports it as a FAIL under the step's topic.

Everything here only looks: it generates no token, starts no keyring child and creates nothing. What `run`
would otherwise find out later (at spawn, or when opening the control socket) is found here first.
"""

from __future__ import annotations

import grp
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawsvc import trust
from clawsvc.config import AUTH_FIX, Config, ConfigError
from clawsvc.config.trusted import check_config_paths
from clawsvc.gateway import compile_cache, statefiles
from clawsvc.gateway.command import SpawnError, Vetted, vet_command
from clawsvc.gateway.process import build_argv, build_env, state_dir, stop_problem
from clawsvc.secrets import describe_token_source
from clawsvc.service.alerts import check_names
from clawsvc.users import user_name

COMMAND = "gateway.command"


def _check_files(config: Config) -> None:
    """The config file, the state dir and the token file (or the generated token) are trusted."""
    try:
        check_config_paths(config)
    except trust.TrustError as exc:
        raise ConfigError(str(exc)) from None


def _check_token_file(config: Config) -> None:
    """auth.token_file read (without blocking) and judged as `run` would; the keyring is not asked here."""
    if config.auth.token_file is None:
        return
    problem = describe_token_source(config).problem
    if problem:
        raise ConfigError(problem)


def _check_command(config: Config) -> Vetted:
    """The gateway's program and entry script can run this gateway, and are trusted like the config (whoever can
    change them runs code as the service, with its token and keys): gateway.command.vet_command, which runs
    nothing of them before judging them and examines them as no one more privileged than their owners."""
    try:
        return vet_command(build_argv(config), build_env(config, "", {}))
    except SpawnError as exc:
        raise ConfigError(str(exc)) from None


def _check_state_dir(config: Config) -> None:
    """gateway.state_dir is a directory, or can be created in its nearest existing ancestor."""
    path = state_dir(config)
    existing = next((p for p in (path, *path.parents) if os.path.lexists(p)), Path("/"))
    fix = "create it (mode 0700) for the user clawsvc runs as, or set gateway.state_dir"
    if not existing.is_dir():
        raise ConfigError(f"gateway.state_dir {path}: {existing} is not a directory; {fix}")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"gateway.state_dir {path} cannot be created: {existing} is not writable; {fix}")


def _check_state_files(config: Config) -> None:
    """Everything in gateway.state_dir belongs to the user the service runs as: the gateway must write it."""
    owner = max(trust.trusted_uids())  # root, or the user judged as (`sudo check-config`: the service user)
    problem = statefiles.summary(statefiles.foreign(state_dir(config), owner), user_name(owner))
    if problem:
        raise ConfigError(f"gateway.state_dir {state_dir(config)}: {problem}; the gateway cannot write them: run "
                          f"`{AUTH_FIX}`")


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


def _check_alerts(config: Config) -> None:
    """The hooks' event names are the catalogue's (which config, below it, cannot know)."""
    check_names(config)


def _check_stop_timeout(config: Config) -> None:
    if problem := stop_problem(config):
        raise ConfigError(problem)


# Each step with the topic `doctor` reports it under; preflight() runs them in this order.
STEPS: tuple[tuple[str, Callable[[Config], Any]], ...] = (
    ("files", _check_files), ("token", _check_token_file), (COMMAND, _check_command),
    ("state dir", _check_state_dir), ("state dir files", _check_state_files), ("compile cache", _check_compile_cache),
    ("control.group", _check_control_group), ("stop timeout", _check_stop_timeout), ("alerts", _check_alerts))


def preflight(config: Config) -> Vetted:
    """Raise ConfigError (exit 78) for anything that would make `run` refuse this config; else the vetted
    gateway.command."""
    results = {topic: step(config) for topic, step in STEPS}
    vetted: Vetted = results[COMMAND]
    return vetted
