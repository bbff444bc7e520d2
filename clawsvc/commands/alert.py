"""`clawsvc alert`: run the config's alert hooks for `service.failed` now, in this process. The units'
OnFailure=clawsvc-alert@%n.service runs it when clawsvc itself has failed for good (systemd gives the failed unit's
result in $MONITOR_SERVICE_RESULT, $MONITOR_EXIT_CODE and $MONITOR_EXIT_STATUS)."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from clawsvc import exitcodes
from clawsvc.config import ConfigError, instances, load_config
from clawsvc.service import catalogue
from clawsvc.service.alerts import check_names, fire
from clawsvc.service.events import Event
from clawsvc.text import cut, printable

_INSTANCE_UNIT = re.compile(r"clawsvc@(.+)\.service")


def _config_path(args: argparse.Namespace) -> str | None:
    """An instance's unit (clawsvc@NAME.service) names its config, whatever -c says (one template serves all)."""
    match = _INSTANCE_UNIT.fullmatch(args.unit)
    return str(instances.config_path(match.group(1))) if match else args.config


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return printable(cut(value, 80)) if value else None


def main(args: argparse.Namespace) -> int:
    """0 every hook ran (or none takes service.failed); 1 a hook failed; 78 the config cannot be used."""
    try:
        config = load_config(_config_path(args))
        check_names(config)
    except (ConfigError, instances.InstanceError) as exc:
        print(f"clawsvc: alert: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    payload = catalogue.SERVICE_FAILED.payload(printable(cut(args.unit, 200)), _env("MONITOR_SERVICE_RESULT"),
                                               _env("MONITOR_EXIT_CODE"), _env("MONITOR_EXIT_STATUS"))
    event = Event(time.time(), "service", catalogue.SERVICE_FAILED.name, payload)
    failures = fire(config, event)
    for failure in failures:
        print(f"clawsvc: {failure}", file=sys.stderr)
    hooked = sum(event.name in hook.on for hook in config.alerts)
    print(f"{event.name} ({args.unit}): {hooked - len(failures)} of {hooked} alert hook(s) ran "
          f"({Path(config.source) if config.source else 'built-in defaults: no hooks'})")
    return exitcodes.FAIL if failures else exitcodes.OK
