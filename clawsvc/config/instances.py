"""Where clawsvc's files live on a host, and named instances: one more supervised gateway per
`clawsvc@NAME.service`, each with its own config, port, state and control socket. The layout lives here so
install, uninstall, keys, the CLI and the units agree on it."""

from __future__ import annotations

import os
import re
from pathlib import Path

INSTALL_ROOT_ENV = "CLAWSVC_INSTALL_ROOT"  # like DESTDIR: every file is written below it (packaging, tests)

INSTANCE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
CONFIG_DIR = Path("/etc/clawsvc")
STATE_ROOT = Path("/var/lib/clawsvc")
RUNTIME_ROOT = Path("/run/clawsvc")
CACHE_ROOT = Path("/var/cache/clawsvc")
GATEWAY_PREFIX = Path("/opt/clawsvc/gateway")  # `clawsvc gateway-install` as root; what a system unit runs


def install_root() -> Path:
    return Path(os.environ.get(INSTALL_ROOT_ENV) or "/")


class InstanceError(ValueError):
    """A bad instance name; str() is one line."""


# names whose paths are the main unit's own: /etc/clawsvc/clawsvc.yaml, /var/lib/clawsvc/openclaw (its gateway's
# state), /var/cache/clawsvc/node-compile-cache; an instance so named would share them (and --purge delete them)
RESERVED = ("clawsvc", "openclaw", "node-compile-cache")


def check_name(name: str) -> str:
    if not INSTANCE_NAME.fullmatch(name):
        shown = name if len(name) <= 40 else name[:40] + "..."
        raise InstanceError(f"instance name {shown!r} must be 1-32 of a-z, 0-9, _ and -, starting with a letter "
                            "or digit")
    if name in RESERVED:
        raise InstanceError(f"instance name {name!r} is taken by the main clawsvc.service's own files (its config, "
                            f"state or cache); choose another name (reserved: {', '.join(RESERVED)})")
    return name


def config_path(name: str) -> Path:
    return CONFIG_DIR / f"{check_name(name)}.yaml"


def unit_name(name: str | None) -> str:
    """The systemd unit: clawsvc.service, or clawsvc@NAME.service for an instance."""
    return "clawsvc.service" if name is None else f"clawsvc@{check_name(name)}.service"


def state_dir(name: str) -> Path:
    return STATE_ROOT / check_name(name) / "openclaw"


def compile_cache(name: str) -> Path:
    """Named in the instance's config too, so `sudo check-config -i NAME` (outside the unit) sees the same path."""
    return CACHE_ROOT / check_name(name) / "node-compile-cache"


def control_socket(name: str) -> Path:
    return RUNTIME_ROOT / check_name(name) / "control.sock"
