"""A gateway-install prefix for upgrade tests (a "farm"): symlinks to the test cache's node and the two real
openclaw releases, `current` on the older one, as `clawsvc gateway-install` leaves a prefix. A clawsvc whose
gateway.command is the farm's stable command is upgraded by `clawsvc upgrade NEW`."""

from __future__ import annotations

from pathlib import Path

from realgw import cache_dir, provision

from clawsvc.commands.runtime import links as gateway_links
from clawsvc.commands.runtime.provision import NODE_VERSION

OLD, NEW = "2026.9.5", "2026.9.6"  # NEW is the tests' default release (the gateway_install fixture)


def build_farm(prefix: Path) -> Path:
    """`prefix` (an empty directory) as a farm on OLD; NEW must be provisioned already."""
    provision(OLD)
    for name in (f"node-{NODE_VERSION}", f"openclaw-{OLD}", f"openclaw-{NEW}"):
        (prefix / name).symlink_to(cache_dir() / name)
    gateway_links.point(prefix, gateway_links.CURRENT, OLD)
    return prefix

