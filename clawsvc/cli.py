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
    "status": "clawsvc.commands.control:status_main",
    "rpc": "clawsvc.commands.control:rpc_main",
    "restart-gateway": "clawsvc.commands.control:restart_main",
    "events": "clawsvc.commands.events:main",
    "keys": "clawsvc.commands.keys:main",
    "install": "clawsvc.commands.install:main",
    "uninstall": "clawsvc.commands.uninstall:main",
    "upgrade": "clawsvc.commands.upgrade:main",
    "doctor": "clawsvc.commands.doctor:main",
    "gateway-install": "clawsvc.commands.gateway_install:main",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clawsvc", description="Run the OpenClaw gateway as a system service.")
    parser.add_argument("--version", action="version", version=f"clawsvc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the service in the foreground (what systemd's ExecStart runs)")
    _config_arg(p)

    p = sub.add_parser("check-config", help="validate the config file")
    _config_arg(p)
    p.add_argument("--print", action="store_true", help="print the effective config, secrets redacted")

    p = sub.add_parser("status", help="show the running service's state",
                       epilog="exit: 0 running; 1 the socket is served by another user; 3 not running or unreachable")
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("rpc", help="call one gateway method through the running service",
                       epilog="exit: 0 ok; 1 the gateway or the service refused or failed (or the socket is served "
                              "by another user); 2 bad, unreadable or oversized params or --timeout; 3 not running")
    _config_arg(p)
    p.add_argument("method")
    p.add_argument("params", nargs="?", default=None, metavar="PARAMS_JSON|@FILE|-",
                   help="the method's params: JSON text, @FILE to read them from a regular file, - to read stdin "
                        "(at most 1 MiB)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the gateway's answer (up to 3600; default: connection.request_timeout)")

    p = sub.add_parser(
        "restart-gateway", help="restart the gateway; the service stays up",
        description="By default the gateway's own safe restart: it finishes its active work (agent turns, replies "
                    "on their way) and restarts in the same process. --force restarts it at once.",
        epilog="exit: 0 restart requested; 1 refused (an adopted gateway, or the socket is served by another user); "
               "3 not running")
    _config_arg(p)
    p.add_argument("--force", action="store_true",
                   help="stop the gateway now (SIGTERM, SIGKILL after 10s) and start a new one; cuts off work in "
                        "flight")

    p = sub.add_parser(
        "events", help="print the service's and the gateway's events (state changes, restarts, chat, ...)",
        description="Recent events, or with --follow every event as it happens: clawsvc's own ("
                    + ", ".join(catalogue.SERVICE) + ") and the gateway's (" + ", ".join(list(catalogue.GATEWAY)[:4])
                    + ", ...; tick only when named). --names lists them all. Payloads can hold chat content.",
        epilog="exit: 0 (also on Ctrl-C or a closed pipe); 1 refused (not allowed, too many followers, or the "
               "socket is served by another user); 3 not running")
    _config_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing events as they happen")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per line: {"time", "source", "name", "payload", "seq"}')
    p.add_argument("--name", dest="names", action="append", default=None, metavar="NAME",
                   help="only events of this name (repeatable); `tick` only arrives when named")
    p.add_argument("--names", dest="list_names", action="store_true",
                   help="list every event name with a one-line description, and exit")

    p = sub.add_parser("keys", help="provider API keys and the gateway token, in the keyring or as encrypted "
                                    "systemd credentials")
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

    p = sub.add_parser("install", help="set up the service: unit, user, config, gateway; start it and wait for READY",
                       epilog="exit: 0 READY (or written, with --no-start or --dry-run); 1 failed (the unit's last "
                              "journal lines are printed); 78 bad config")
    _config_arg(p)
    _kind_args(p)
    p.add_argument("--port", type=int, default=None, metavar="P",
                   help="the gateway's port for a new --instance config (default: the first free one from 18790)")
    p.add_argument("--no-start", action="store_true", help="write everything and enable the unit, but do not start it")
    p.add_argument("--dry-run", action="store_true", help="print what would be written and run, change nothing")

    p = sub.add_parser("uninstall", help="stop, disable and remove what install wrote (state and config stay)")
    _config_arg(p)
    _kind_args(p)
    p.add_argument("--purge", action="store_true",
                   help="also remove the config, the state and cache directories (and the service user with the "
                        "last unit); the unit's credentials go in any case")

    p = sub.add_parser(
        "upgrade", help="switch the gateway to another openclaw version: provision, canary, switch, verify",
        description="Provision VERSION beside the current gateway (from `gateway-install`), start it once on a "
                    "scratch port as a canary, switch the stable link the config names, restart the gateway "
                    "through the running service, and roll back if it does not come up healthy.",
        epilog="exit: 0 upgraded (or already on VERSION; or, with the service stopped, switched for its next "
               "start); 1 refused (canary, layout, npm) or rolled back (the old gateway keeps serving); 2 VERSION "
               "with --rollback; 78 bad config; 130 interrupted (nothing left running)")
    _config_arg(p)
    p.add_argument("target_version", nargs="?", default=None, metavar="VERSION",
                   help="an openclaw version or npm tag (default: the newest published release)")
    p.add_argument("--rollback", action="store_true", help="go back to the previous version")

    p = sub.add_parser("doctor", help="check node, the gateway, port, directories, compile cache, token, keys, "
                                      "credentials and units")
    _config_arg(p)

    p = sub.add_parser("gateway-install", help="provision Node and openclaw from the npm registry")
    p.add_argument("--version", dest="gateway_version", default=None, metavar="V")
    p.add_argument("--prefix", default=None, metavar="DIR")
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
