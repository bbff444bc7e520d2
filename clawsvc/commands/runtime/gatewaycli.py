"""`clawsvc openclaw ARGS...`: the installed gateway's own CLI, as the user the service runs as, with the very
environment the service gives its gateway (state dir, config path, port, HOME, compile cache, the token and the
provider keys: all through the environment, never argv), started in the state dir. `openclaw` on PATH is never
needed, and what the CLI writes stays the service user's.

Who runs it as whom:
- the service's user: the CLI is exec'd as it is.
- root: as the owner of gateway.state_dir (the service's user; root for a service run as root), through
  util-linux setpriv: that uid, its group and supplementary groups, no new privileges. Without a terminal (no
  stdio on one and no controlling terminal to open as /dev/tty) it is exec'd. On one, it runs in a session of its
  own, still on the terminal: as the service's user it could push keystrokes into root's terminal (TIOCSTI), which
  a process outside the terminal's session cannot; clawsvc waits as its parent, forwarding Ctrl-C and the like,
  and when it ends kills what of that user still holds the terminal (ttysweep).
- anyone else (members of control.group among them): refused. The CLI runs code as the service's user with its
  token and keys; what they may do goes through the control socket (`clawsvc rpc`, `clawsvc dashboard`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from clawsvc import exitcodes, trust
from clawsvc.commands.runtime import ttysweep
from clawsvc.config import Config, ConfigError, load_config
from clawsvc.config.instances import unit_name
from clawsvc.config.values import TOKEN_ENV
from clawsvc.gateway.command import SpawnError, vet_command
from clawsvc.gateway.process import build_env, state_dir
from clawsvc.secrets import SecretError, cli_secrets
from clawsvc.users import SERVICE_USER, user_name

CANNOT_RUN = 126  # as a shell says of a command it found but cannot run
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what systemd gives a unit
FROM_CALLER = ("TERM", "COLORTERM", "COLUMNS", "LINES", "LANG", "LANGUAGE", "TZ")  # the terminal and the locale
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH, signal.SIGUSR1,
             signal.SIGUSR2)


class CannotRun(Exception):
    """clawsvc cannot run the CLI for this caller; str() is one line with the way out."""


@dataclass(frozen=True)
class Account:
    uid: int
    gid: int
    name: str
    home: str

    @classmethod
    def of(cls, uid: int) -> Account:
        entry = pwd.getpwuid(uid)
        return cls(uid, entry.pw_gid, entry.pw_name, entry.pw_dir)


def service_account(config: Config) -> Account:
    """Who the service runs as: the owner of its state dir (trust allows only root or the service user there).
    CannotRun for a caller who is neither root nor that user, before anything of theirs is judged."""
    path = state_dir(config)
    euid = os.geteuid()
    if euid != 0:
        try:
            owner: int | None = os.stat(path).st_uid
        except OSError:  # /var/lib/clawsvc is the service user's 0700: others cannot even look
            owner = None
        if owner != euid:
            name = user_name(owner) if owner is not None else SERVICE_USER
            raise CannotRun(f"the gateway's CLI runs as {name}, the user the service runs as: run it as root (sudo "
                            f"clawsvc openclaw ...) or as {name}; members of control.group have `clawsvc rpc "
                            "METHOD` and `clawsvc dashboard`")
    try:
        resolved = trust.check_dir(path, "gateway.state_dir")
        if resolved is None:
            raise CannotRun(f"gateway.state_dir {path} does not exist yet: the service makes it at its first start "
                            "(sudo systemctl start clawsvc)")
        return Account.of(os.stat(resolved).st_uid)
    except trust.TrustError as exc:
        raise CannotRun(str(exc)) from None
    except KeyError:
        raise CannotRun(f"gateway.state_dir {path} belongs to a uid without a passwd entry; give it to the user "
                        "the service runs as") from None


def cli_env(config: Config, token: str | None, provider_env: Mapping[str, str], account: Account,
            caller: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The gateway's environment (process.build_env) on a base like the unit's: the account's HOME and names, the
    system PATH, and the caller's terminal and locale."""
    base = {"PATH": SERVICE_PATH, "HOME": account.home, "USER": account.name, "LOGNAME": account.name,
            **{key: value for key, value in caller.items() if key in FROM_CALLER or key.startswith("LC_")}}
    env = build_env(config, token or "", provider_env, base=base)
    if not token:
        env.pop(TOKEN_ENV, None)
    return env


def _setpriv(account: Account) -> list[str]:
    tool = shutil.which("setpriv")
    if tool is None:
        raise CannotRun("setpriv (util-linux) is not installed; install it, or run the command as the service's "
                        f"user: sudo -u {account.name} clawsvc openclaw ...")
    return [tool, "--reuid", str(account.uid), "--regid", str(account.gid), "--init-groups", "--no-new-privs", "--"]


def _on_a_terminal() -> bool:
    """Whether the CLI would reach a terminal: through its stdin, stdout or stderr, or, whatever they are (`sudo
    clawsvc openclaw ... </dev/null >out 2>&1` in root's shell), by opening /dev/tty, our controlling terminal."""
    if any(os.isatty(fd) for fd in (0, 1, 2)):
        return True
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # ENXIO: no controlling terminal
        return False
    os.close(fd)
    return True


def command(args: argparse.Namespace) -> tuple[list[str], dict[str, str], str, Account | None]:
    """(argv, env, cwd, the account it runs as when it must run in a session of its own, watched by us, else
    None: exec'd) for this caller; CannotRun, ConfigError, SpawnError or SecretError when it cannot."""
    with trust.judged_as_the_service():
        config = load_config(args.config)
        account = service_account(config)
        token, provider_env = cli_secrets(config, unit_name(getattr(args, "instance", None)))
        env = cli_env(config, token, provider_env, account)
        program = vet_command(config.gateway.command, env).argv
    words = list(args.args[1:] if args.args[:1] == ["--"] else args.args)
    if token is None:
        print("clawsvc openclaw: note: no gateway token yet (the service makes one at its first start); commands "
              "that talk to the gateway will fail", file=sys.stderr)
    if os.geteuid() == account.uid:
        return [*program, *words], env, str(state_dir(config)), None
    alone = account if _on_a_terminal() else None
    return [*_setpriv(account), *program, *words], env, str(state_dir(config)), alone


def run_alone(argv: Sequence[str], env: Mapping[str, str], cwd: str, account: Account) -> int:
    """Run argv in a session of its own (no controlling terminal, so no TIOCSTI into ours), forwarding the signals
    the terminal sends us, then kill what `account` left on our terminal; its exit status, 128+N when a signal
    ended it."""
    terminals = ttysweep.terminal_names()
    child = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, start_new_session=True)
    previous = {sig: signal.signal(sig, functools.partial(_forward, child)) for sig in FORWARDED}
    for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)  # a stopped parent would leave the CLI on the terminal alone
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if killed := ttysweep.sweep(account.uid, terminals):
        print(f"clawsvc openclaw: stopped {len(killed)} process(es) of {account.name} the CLI left behind with this "
              f"terminal open (pid {', '.join(map(str, killed[:5]))}): they could read what is typed here next",
              file=sys.stderr)
    return 128 - code if code < 0 else code


def _forward(child: subprocess.Popen[bytes], signum: int, _frame: object) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)


def main(args: argparse.Namespace) -> int:
    try:
        argv, env, cwd, alone = command(args)
    except (ConfigError, SpawnError) as exc:
        print(f"clawsvc openclaw: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except (CannotRun, SecretError) as exc:
        print(f"clawsvc openclaw: {exc}", file=sys.stderr)
        return CANNOT_RUN
    if alone is not None:
        return run_alone(argv, env, cwd, alone)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    except OSError as exc:
        print(f"clawsvc openclaw: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
    return CANNOT_RUN

