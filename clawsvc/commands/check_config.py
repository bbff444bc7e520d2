"""`clawsvc check-config`: the validation `run` does before it starts (same code), optionally printing the
effective config with secrets redacted and very long strings cut."""

from __future__ import annotations

import argparse
import sys

from clawsvc import exitcodes, trust
from clawsvc.config import ConfigError, dump, load_config
from clawsvc.service.preflight import preflight


def main(args: argparse.Namespace) -> int:
    """Exit 0 or 78. As root, paths are judged as the service running as user `clawsvc` would judge them."""
    try:
        with trust.judged_as_the_service():
            config = load_config(args.config)
            preflight(config)
    except ConfigError as exc:
        print(f"clawsvc: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    where = config.source or "built-in defaults (no config file)"
    if args.print:
        print(f"# effective config from {where}; env values with secret-looking names are redacted")
        sys.stdout.write(dump(config))
    else:
        print(f"{where}: ok")
    return 0
