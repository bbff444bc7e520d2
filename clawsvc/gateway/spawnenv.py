"""What every gateway inherits of clawsvc's environment, and the one flag its argv gets from the state dir."""

from __future__ import annotations

import os
from collections.abc import Mapping

from clawsvc.config import GATEWAY_CONFIG

# What belongs to clawsvc's own service manager, plus the hints OpenClaw reads to decide that systemd or
# launchd supervises it directly (SUPERVISOR_HINTS in its dist): we are its supervisor, not them.
STRIP_ENV = frozenset({
    "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "INVOCATION_ID", "JOURNAL_STREAM", "NODE_OPTIONS",
    "SYSTEMD_EXEC_PID", "MANAGERPID", "CREDENTIALS_DIRECTORY", "OPENCLAW_SYSTEMD_UNIT",
    "LAUNCH_JOB_LABEL", "LAUNCH_JOB_NAME", "XPC_SERVICE_NAME", "OPENCLAW_LAUNCHD_LABEL",
    "OPENCLAW_SERVICE_MARKER", "OPENCLAW_SERVICE_KIND",
})
STRIP_PREFIXES = ("LISTEN_",)
GATEWAY_ID_ENV = "CLAWSVC_GATEWAY_ID"  # marks a gateway's processes (proctree, leftovers)
ALLOW_UNCONFIGURED = "--allow-unconfigured"


def inherited(base: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in base.items()
            if key not in STRIP_ENV and not key.startswith(STRIP_PREFIXES)}


def unconfigured_flag(state_dir: str) -> list[str]:
    """[ALLOW_UNCONFIGURED] until the gateway has written its own config into its state dir."""
    return [] if os.path.exists(os.path.join(state_dir, GATEWAY_CONFIG)) else [ALLOW_UNCONFIGURED]
