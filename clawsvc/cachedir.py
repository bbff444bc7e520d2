"""Where clawsvc keeps what it can always rebuild (the gateway's compile cache)."""

from __future__ import annotations

import os
from collections.abc import Mapping

SYSTEM = "/var/cache/clawsvc"


def user_cache_dir(environ: Mapping[str, str]) -> str:
    """A user's: the XDG cache dir's clawsvc."""
    xdg = environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg or os.path.join(os.path.expanduser("~"), ".cache"), "clawsvc")


def cache_dir(environ: Mapping[str, str], root: bool) -> str:
    """The unit's CacheDirectory= ($CACHE_DIRECTORY, its first entry when it lists several), else SYSTEM as root,
    else the user's."""
    systemd = environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    return SYSTEM if root else user_cache_dir(environ)
