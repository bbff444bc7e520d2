"""The gateway's Node compile cache (NODE_COMPILE_CACHE, honoured by openclaw): where it lives, in the gateway's
environment, and created 0700 under the same trust rules as the state dir. Without it the cache goes to the
unit's private /tmp and is lost at every restart; warm, it takes about a second off each gateway start."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from clawsvc import trust
from clawsvc.config import Config

log = logging.getLogger("clawsvc.gateway.compile_cache")

ENV = "NODE_COMPILE_CACHE"
# Given NODE_COMPILE_CACHE, openclaw's launcher re-executes itself with a per-version subdirectory of it and stays
# on as a wrapper around the real gateway; its own "already re-executed" marker keeps the gateway our child.
# Node keys its cache entries by its own version and each file's content, so versions can share the directory.
NO_RESPAWN_ENV = {"OPENCLAW_PACKAGED_COMPILE_CACHE_RESPAWNED": "1"}


def compile_cache_dir(config: Config) -> Path | None:
    """The directory clawsvc creates, checks and gives the gateway as NODE_COMPILE_CACHE; None when
    gateway.compile_cache is false or gateway.env sets NODE_COMPILE_CACHE itself (then it is the admin's)."""
    if config.gateway.compile_cache is None or ENV in config.gateway.env:
        return None
    return config.gateway.compile_cache.absolute()  # relative: like state_dir, from clawsvc's cwd


def set_env(config: Config, env: dict[str, str]) -> None:
    if (path := compile_cache_dir(config)) is not None:
        env[ENV] = str(path)


def keep_gateway_unwrapped(env: dict[str, str]) -> None:
    """Whoever set NODE_COMPILE_CACHE (clawsvc, gateway.env, clawsvc's own environment), the gateway we spawn
    must be the gateway, not a launcher waiting for it."""
    if env.get(ENV):
        for key, value in NO_RESPAWN_ENV.items():
            env.setdefault(key, value)


def prepare(config: Config, env: dict[str, str]) -> None:
    """Create compile_cache_dir 0700 (trust.open_private_dir). TrustError for one we cannot trust: a cache another
    uid can write is code it can run in the gateway. One that cannot be created costs only speed: NODE_COMPILE_CACHE
    is then taken out of `env`, and a warning says so."""
    path = compile_cache_dir(config)
    if path is None:
        return
    try:
        os.close(trust.open_private_dir(path, "gateway.compile_cache"))
    except OSError as exc:  # TrustError is not one: it goes to the caller
        env.pop(ENV, None)
        log.warning("cannot create gateway.compile_cache %s: %s; the gateway starts without a persistent compile "
                    "cache (each start compiles openclaw again); create it (mode 0700) for the user clawsvc runs "
                    "as, or set gateway.compile_cache: false", path, exc.strerror or exc.__class__.__name__)


def check(config: Config) -> None:
    """What `run` would refuse, changing nothing: TrustError for a directory (or a path to it) we cannot trust.
    One that cannot be checked or created is left to the warning at start."""
    path = compile_cache_dir(config)
    if path is None:
        return
    try:
        trust.check_dir(path, "gateway.compile_cache")
    except OSError:
        return
