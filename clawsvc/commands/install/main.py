"""`clawsvc install`: the entry point. The system set-up to READY is install.system; what is written, for every
kind, is install.plan; the reachability check is install.reach; the generated config install.genconfig; --user
and --launchd are started by install.agents."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clawsvc import exitcodes
from clawsvc.commands.install import agents as install_agents
from clawsvc.commands.install import system as install_system
from clawsvc.commands.install.plan import LAUNCHD_LABEL, InstallError, apply, default_kind, install_root, plan, show


def usage_problem(args: argparse.Namespace, kind: str) -> str | None:
    if args.instance is not None and kind != "system":
        return f"--instance works with --system only (not --{kind})"
    if args.port is not None and args.instance is None:
        return "--port sets the port of a new --instance config; for the main unit set gateway.port in its config"
    if args.port is not None and not 1 <= args.port <= 65535:
        return f"--port {args.port} is not a TCP port (1-65535)"
    return None


def main(args: argparse.Namespace) -> int:
    kind = args.kind or ("system" if args.instance else default_kind())
    problem = usage_problem(args, kind)
    if problem:
        print(f"clawsvc: install: {problem}", file=sys.stderr)
        return exitcodes.USAGE
    if kind == "system":
        return install_system.main(args)
    return agent_main(kind, args)


def agent_main(kind: str, args: argparse.Namespace) -> int:
    """--user and --launchd: write the unit or plist and the config, then let install_agents start it."""
    root = install_root()
    out = sys.stdout
    try:
        todo = plan(kind, Path(args.config).absolute() if args.config else None)
        if args.dry_run:
            show(todo, root, out)
            written = []
        else:
            written = apply(todo, root, out)
    except InstallError as exc:
        print(f"clawsvc: install: {exc}", file=sys.stderr)
        return exitcodes.FAIL
    except PermissionError as exc:
        print(f"clawsvc: install: cannot write {exc.filename}: permission denied", file=sys.stderr)
        return exitcodes.FAIL
    except OSError as exc:
        print(f"clawsvc: install: cannot write {exc.filename}: {exc.strerror or exc}; fix what is in its place, "
              "then rerun", file=sys.stderr)
        return exitcodes.FAIL
    unit = todo.files[0].path
    if args.dry_run or args.no_start or root != Path("/"):
        print("\n# dry run: nothing was written. Then:" if args.dry_run else "\nNext:", file=out)
        for step in todo.next_steps:
            print(f"  {step}", file=out)
        return exitcodes.OK
    changed = unit in written
    if kind == "user":
        return install_agents.activate_user(unit, "clawsvc.service", out, changed)
    return install_agents.activate_launchd(unit, LAUNCHD_LABEL, out, changed)
