"""The `clawsvc` command line: argument parsing only; each command lives in the module named by its job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from clawsvc import __version__, exitcodes
from clawsvc.service import catalogue

# command name -> "module:function"; each function takes the parsed args and returns an exit code.
HANDLERS = {
    "run": "clawsvc.service.run:main",
    "check-config": "clawsvc.commands.check_config:main",
    "status": "clawsvc.commands.control.status:status_main",
    "rpc": "clawsvc.commands.control.rpc:rpc_main",
    "restart-gateway": "clawsvc.commands.control.restart:restart_main",
    "events": "clawsvc.commands.control.events:main",
    "metrics": "clawsvc.commands.control.metrics:main",
    "alert": "clawsvc.commands.alert:main",
    "keys": "clawsvc.commands.keys:main",
    "install": "clawsvc.commands.install.main:main",
    "uninstall": "clawsvc.commands.install.uninstall:main",
    "upgrade": "clawsvc.commands.upgrade.main:main",
    "doctor": "clawsvc.commands.doctor.main:main",
    "gateway-install": "clawsvc.commands.runtime.provision:main",
    "dashboard": "clawsvc.commands.control.dashboard:main",
    "openclaw": "clawsvc.commands.runtime.gatewaycli:main",
}


def _config_arg(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("-c", "--config", metavar="FILE",
                       help="config file (default: $CLAWSVC_CONFIG, /etc/clawsvc/clawsvc.yaml as root, "
                            "else $XDG_CONFIG_HOME/clawsvc/clawsvc.yaml)")
    which.add_argument("-i", "--instance", metavar="NAME",
                       help="a named instance (unit clawsvc@NAME.service, config /etc/clawsvc/NAME.yaml)")


def _kind_args(parser: argparse.ArgumentParser) -> None:
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--system", dest="kind", action="store_const", const="system",
                      help="the system unit (default as root on Linux)")
    kind.add_argument("--user", dest="kind", action="store_const", const="user",
                      help="a systemd --user unit (default for other users on Linux)")
    kind.add_argument("--launchd", dest="kind", action="store_const", const="launchd",
                      help="a launchd agent (default on macOS)")


GROUPS = (
    ("run the service", ("run", "check-config", "alert")),
    ("ask the running service", ("status", "events", "metrics", "rpc", "restart-gateway")),
    ("use the assistant", ("dashboard", "openclaw")),
    ("set up and maintain", ("install", "uninstall", "upgrade", "gateway-install", "keys", "doctor")),
)


def _command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, exits: str,
             description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its exit codes."""
    return sub.add_parser(name, help=summary, description=description or summary[0].upper() + summary[1:] + ".",
                          epilog=f"exit: {exits}")


def _grouped(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> str:
    summaries = {action.dest: action.help or "" for action in sub._choices_actions}
    width = max(len(name) for name in summaries)
    blocks = [f"{title}:\n" + "\n".join(f"  {name:<{width}}  {summaries[name]}" for name in names)
              for title, names in GROUPS]
    return "\n\n".join(blocks) + "\n\n`clawsvc COMMAND --help` says more, exit codes included."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clawsvc", description="Run the OpenClaw gateway as a system service.",
                                     usage="clawsvc [-h] [--version] COMMAND ...",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"clawsvc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help=argparse.SUPPRESS)

    p = _command(sub, "run", "run the service in the foreground (what systemd's ExecStart runs)",
                 "0 clean stop; 1 gave up (max_attempts failures in a row, an untrusted port holder, the control "
                 "socket cannot be opened); 78 bad config (systemd does not restart it)")
    _config_arg(p)

    p = _command(sub, "check-config", "validate the config file: the very checks `run` makes",
                 "0 valid; 78 invalid (one line naming file:line and key, or the path and its fix)")
    _config_arg(p)
    p.add_argument("--print", action="store_true", help="print the effective config, secrets redacted")

    p = _command(sub, "status", "show the running service's state",
                 "0 running; 1 the socket is served by another user; 3 not running or unreachable")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = _command(sub, "rpc", "call one gateway method through the running service",
                 "0 ok; 1 the gateway or the service refused or failed (or the socket is served by another user); "
                 "2 bad, unreadable or oversized params or --timeout; 3 not running")
    _config_arg(p)
    p.add_argument("method")
    p.add_argument("params", nargs="?", default=None, metavar="PARAMS_JSON|@FILE|-",
                   help="the method's params: JSON text, @FILE to read them from a regular file, - to read stdin "
                        "(at most 1 MiB)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the gateway's answer (up to 3600; default: connection.request_timeout)")

    p = _command(sub, "restart-gateway", "restart the gateway; the service stays up",
                 "0 restart requested; 1 refused (an adopted gateway, or the socket is served by another user); "
                 "3 not running",
                 "By default the gateway's own safe restart: it finishes its active work (agent turns, replies on "
                 "their way) and restarts in the same process. --force restarts it at once.")
    _config_arg(p)
    p.add_argument("--force", action="store_true",
                   help="stop the gateway now (SIGTERM, SIGKILL after 10s) and start a new one; cuts off work in "
                        "flight")

    p = _command(sub, "events", "print the service's and the gateway's events (state changes, restarts, chat, ...)",
                 "0 (also on Ctrl-C or a closed pipe); 1 refused (not allowed, too many followers, or the socket is "
                 "served by another user); 3 not running",
                 "Recent events, or with --follow every event as it happens: clawsvc's own ("
                 + ", ".join(catalogue.SERVICE) + ") and the gateway's (" + ", ".join(list(catalogue.GATEWAY)[:4])
                 + ", ...; tick only when named). --names lists them all. Payloads can hold chat content.")
    _config_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing events as they happen")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"time", "source", "name", "payload", "seq"}')
    p.add_argument("--name", dest="names", action="append", default=None, metavar="NAME",
                   help="only events of this name (repeatable); `tick` only arrives when named")
    p.add_argument("--names", dest="list_names", action="store_true",
                   help="list every event name with a one-line description, and exit")

    p = _command(sub, "metrics", "print the service's Prometheus metrics (as metrics.listen serves them)",
                 "0 printed; 1 refused (or the socket is served by another user); 3 not running")
    _config_arg(p)

    p = _command(sub, "alert", "run the config's alert hooks for service.failed now (what the units' OnFailure= "
                               "runs)",
                 "0 the hooks ran (or none takes service.failed); 1 a hook failed; 78 bad config",
                 "Run the alert hooks that list service.failed, in this process, with the failed unit's result "
                 "from $MONITOR_SERVICE_RESULT, $MONITOR_EXIT_CODE and $MONITOR_EXIT_STATUS (systemd sets them for "
                 "OnFailure= units). An instance's unit (clawsvc@NAME.service) reads /etc/clawsvc/NAME.yaml.")
    _config_arg(p)
    p.add_argument("--unit", default="clawsvc.service", metavar="UNIT", help="the unit that failed")

    p = _command(sub, "keys", "provider API keys and the gateway token, in the keyring or as encrypted systemd "
                              "credentials",
                 "0 done; 1 neither store is usable (set), or the key was in neither (delete); 2 usage")
    _config_arg(p)
    keys = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    key_set = keys.add_parser("set", help="store a key (read from stdin or a no-echo prompt)")
    key_set.add_argument("provider", help="a provider name, or gateway-token")
    key_set.add_argument("--store", choices=("auto", "keyring", "credential"), default="auto",
                         help="where: the keyring, or an encrypted systemd credential for the unit (root only); "
                              "auto: the keyring when it has a backend, else a credential")
    keys.add_parser("delete", help="remove a stored key (from the keyring and the unit's credentials)"
                    ).add_argument("provider")
    keys.add_parser("list", help="list providers and where each key is stored")

    p = _command(sub, "install", "set up the service: unit, user, config, gateway; start it and wait for READY",
                 "0 READY (or written, with --no-start or --dry-run); 1 failed (the unit's last journal lines are "
                 "printed); 2 usage; 78 bad config")
    _config_arg(p)
    _kind_args(p)
    p.add_argument("--port", type=int, default=None, metavar="P",
                   help="the gateway's port for a new --instance config (default: the first free one from 18790)")
    p.add_argument("--no-start", action="store_true", help="write everything and enable the unit, but do not start it")
    p.add_argument("--dry-run", action="store_true", help="print what would be written and run, change nothing")

    p = _command(sub, "uninstall", "stop, disable and remove what install wrote (state and config stay)",
                 "0 removed (also when nothing was installed); 1 the service manager failed; 2 usage")
    _config_arg(p)
    _kind_args(p)
    p.add_argument("--purge", action="store_true",
                   help="also remove the config, the state and cache directories (and the service user with the "
                        "last unit); the unit's credentials go in any case")

    p = _command(sub, "upgrade", "switch the gateway to another openclaw version: provision, canary, switch, verify",
                 "0 upgraded (or already on VERSION; or, with the service stopped, switched for its next start); "
                 "1 refused (canary, database preflight, layout, npm) or rolled back (the old gateway keeps "
                 "serving); 2 VERSION with --rollback; 78 bad config; 130 interrupted (nothing left running)",
                 "Provision VERSION beside the current gateway (from `gateway-install`), check the service's state "
                 "with its database preflight and start it once on a copy of that state and a scratch port as a "
                 "canary, switch the stable link the config names, restart the gateway through the running service "
                 "(its active work finishes first), and roll back if it does not come up healthy.")
    _config_arg(p)
    p.add_argument("target_version", nargs="?", default=None, metavar="VERSION",
                   help="an openclaw version or npm tag (default: the newest published release)")
    p.add_argument("--rollback", action="store_true", help="go back to the previous version")

    p = _command(sub, "doctor", "check node, the gateway, port, directories, compile cache, token, keys, credentials "
                                "and units",
                 "0 all good (with --fix: after fixing); 1 problems listed (check-config's checks among them); 78 the "
                 "config cannot be loaded")
    _config_arg(p)
    p.add_argument("--fix", action="store_true",
                   help="as root: give what is in the state dir back to the service's user (never following a "
                        "link) and point the gateway's openclaw.json back at clawsvc's token, then check again")

    p = _command(sub, "dashboard", "a link that opens the gateway's Control UI logged in, and the ssh line for "
                                   "another machine",
                 "0 a link printed; 1 refused or no link (not allowed, the gateway could not make one, or the socket "
                 "is served by another user); 3 not running",
                 "Asks the running service for a one-time login link to the Control UI (the gateway's own owner "
                 "link: it works once, for one browser, for ten minutes, and never shows the gateway token), and "
                 "prints the `ssh -L` line that brings the gateway's port to another machine. For root, the "
                 "service's user and members of control.group.")
    _config_arg(p)
    p.add_argument("--json", action="store_true",
                   help='one JSON object: {"url", "expiresAtMs", "httpUrl", "port", "ssh"}')

    p = _command(sub, "openclaw", "run the gateway's own CLI as the service's user, with the service's environment",
                 "0 the CLI succeeded; any other code is the CLI's own, except 78 the config cannot be loaded or "
                 "gateway.command is refused, and 126 clawsvc cannot run it for you (not root or the service's user, "
                 "no state dir yet, no setpriv)",
                 "Runs the installed openclaw CLI (gateway.command) with ARGS, as the user the service runs as, "
                 "with the environment the service gives its gateway (state dir, config, port, the token and the "
                 "provider keys, never on the command line), from the state dir: `clawsvc openclaw health`, "
                 "`clawsvc openclaw config set agents.defaults.model.primary anthropic/claude-sonnet-4-5`, "
                 "`clawsvc openclaw channels login`. As root or the service's user only.")
    _config_arg(p)
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="the openclaw command and its arguments (after -- if they start with -)")

    p = _command(sub, "gateway-install", "provision Node and openclaw from the npm registry",
                 "0 installed (or already there); 1 failed (npm, the prefix, a version that is not one)")
    p.add_argument("--version", dest="gateway_version", default=None, metavar="V")
    p.add_argument("--prefix", default=None, metavar="DIR")
    parser.epilog = _grouped(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "instance", None) is not None:
        from clawsvc.config import instances

        try:
            args.config = str(instances.config_path(args.instance))
        except instances.InstanceError as exc:
            print(f"clawsvc: {exc}", file=sys.stderr)
            return exitcodes.USAGE
    module_name, func_name = HANDLERS[args.command].split(":")
    handler = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        sys.stderr.close()
        return exitcodes.FAIL


if __name__ == "__main__":
    raise SystemExit(main())
