"""The start plan: `clawsvc run` execs the gateway before it has even imported what reading its config needs.

Loading the YAML into the typed config, its checks and the secrets cost most of clawsvc's own start (yaml,
dataclasses, logging and pathlib are slow to import). So after a start from the config, clawsvc writes down what
it exec'd: the gateway's argv, its cwd, the environment it added (for a secret only the file it came from, never
the value) and the files that decided it. The next `clawsvc run` with the same arguments, working directory,
environment and uid, whose config file and programs are unchanged, execs the gateway from that plan first, then
loads the config exactly as before and compares: the same argv, cwd and environment, and the early gateway is the
first gateway; anything different, and it is killed (a gateway takes seconds to listen, so nobody has talked to
it) and the config's own is started.

The plan decides what runs with the token, so everything it names, and the plan file itself, must be root's or
ours, in directories nobody else can write (see `trusted`). Anything unexpected means no early gateway: the start
goes on as it does without a plan. The plan file (0600) holds no secret value; the environment is keyed by a
digest, but what clawsvc adds to the gateway's environment under names that do not look secret (its paths,
gateway.env entries) is written down as it is. This module imports nothing the interpreter has not loaded
already, apart from built-in modules (marshal, _sha256, _signal, and _socket in gateway.portcheck).
"""

from __future__ import annotations

import marshal
import os
import stat
import sys

from clawsvc import __version__
from clawsvc.cachedir import cache_dir
from clawsvc.gateway.portcheck import port_in_use
from clawsvc.gateway.spawnenv import ALLOW_UNCONFIGURED, GATEWAY_ID_ENV, inherited, unconfigured_flag
from clawsvc.pathwalk import walk
from clawsvc.randomness import token_hex
from clawsvc.secretrule import is_secret_name, one_word
from clawsvc.service.earlyspawn import EarlyGateway, spawn

try:
    from _sha256 import sha256  # built in; hashlib would load OpenSSL
except ImportError:  # Python 3.12+
    from _sha2 import sha256  # type: ignore[import-not-found, no-redef]

TYPE_CHECKING = False  # typing itself is not loaded on the start plan's path
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

FORMAT = 2
FILE = "start-plan"
MAX_BYTES = 256 * 1024
MAX_PLANS = 8  # one per (arguments, cwd, environment) seen last; a service has one
SECRET_MAX = 64 * 1024
OFF_ENV = "CLAWSVC_START_PLAN"  # "off": neither use nor write a plan
# What differs at every start of the same service (systemd's per-invocation values, a shell's bookkeeping)
VOLATILE = frozenset({"INVOCATION_ID", "JOURNAL_STREAM", "SYSTEMD_EXEC_PID", "MANAGERPID", "WATCHDOG_PID",
                      "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "_", "PWD", "OLDPWD", "SHLVL"})
Key = tuple[object, ...]
StatKey = tuple[int, ...]


def enabled(environ: Mapping[str, str]) -> bool:
    return sys.platform.startswith("linux") and environ.get(OFF_ENV, "").lower() != "off"


def plan_key(argv: Sequence[str], environ: Mapping[str, str], cwd: str) -> Key:
    """What must be the same for a plan to apply. The environment counts as a digest (any value may be a
    password, in a proxy URL say), a secret-looking variable by its name only."""
    env = "\0".join(sorted(f"{name}={'' if is_secret_name(name) else value}" for name, value in environ.items()
                           if name not in VOLATILE))
    digest = sha256(env.encode("utf-8", "surrogateescape")).hexdigest()
    return FORMAT, __version__, sys.executable, os.geteuid(), tuple(argv), cwd, digest


def file_key(path: str) -> StatKey:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid


def dir_key(path: str) -> StatKey:
    st = os.stat(path)  # not its times: the gateway writes in its state dir all the time
    return st.st_dev, st.st_ino, st.st_mode, st.st_uid


def _safe(st: os.stat_result, euid: int) -> bool:
    return st.st_uid in (0, euid) and not st.st_mode & 0o022


class _Refused(Exception):
    pass


def trusted(path: str) -> bool:
    """Whether only root or this uid can change what `path` is: the file itself (root's or ours, writable by
    nobody else), every directory passed through (a sticky one like /tmp will do: what lies in it is judged
    in turn) and every symlink followed to reach it; trust.resolve's rules, as a yes or no."""
    euid = os.geteuid()

    def passage(directory: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode) and (st.st_uid not in (0, euid)
                                         or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX)):
            raise _Refused

    def link(name: str, st: os.stat_result) -> None:
        if st.st_uid not in (0, euid):
            raise _Refused

    try:
        _, st = walk(path, passage, link, _Refused)
    except (OSError, _Refused):
        return False
    return st is not None and _safe(st, euid)


def read_trusted(path: str, limit: int) -> tuple[bytes, os.stat_result] | None:
    """The content of a regular file that passes `trusted`, at most `limit` bytes, and its fstat; else None."""
    if not trusted(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        data = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return (data, st) if len(data) <= limit else None


def _load(path: str) -> dict[Key, dict[str, object]] | str:
    """The plans in `path`, or why there are none to use."""
    if not os.path.lexists(path):
        return f"{path} does not exist yet"
    found = read_trusted(path, MAX_BYTES)
    if found is None:
        return f"{path} is too big, or not only ours to change"
    data, st = found
    if st.st_mode & 0o077:
        return f"{path} is readable by other users"
    try:
        plans = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        plans = None
    return plans if isinstance(plans, dict) else f"{path} is garbled"


def secret(path: str) -> str | None:
    """The one-word secret a trusted file holds, or None."""
    found = read_trusted(path, SECRET_MAX)
    if found is None:
        return None
    try:
        value, problem = one_word(found[0].decode("utf-8"))
    except UnicodeDecodeError:
        return None
    return value if problem is None else None


def begin(argv: Sequence[str]) -> EarlyGateway | str:
    """The gateway exec'd from this start's plan, or why not (one line for the log, no secret in it). Never
    raises: whatever goes wrong here, the start from the config follows."""
    environ = os.environ
    try:
        if not enabled(environ):
            return f"switched off ({OFF_ENV}=off, or not Linux)"
        path = os.path.join(cache_dir(environ, os.geteuid() == 0), FILE)
        plans = _load(path)
        if isinstance(plans, str):
            return plans
        plan = plans.get(plan_key(argv, environ, os.getcwd()))
        if plan is None:
            return f"none in {path} for these arguments, working directory and environment"
        return _begin(plan, path, environ)
    except Exception as exc:
        return f"the plan could not be followed ({exc.__class__.__name__})"


def _begin(plan: dict[str, object], path: str, environ: Mapping[str, str]) -> EarlyGateway | str:
    files: dict[str, StatKey] = plan["files"]  # type: ignore[assignment]
    dirs: dict[str, StatKey] = plan["dirs"]  # type: ignore[assignment]
    for name, key in files.items():
        if not os.path.exists(name) or file_key(name) != key:
            return f"{name} changed since the plan was written"
        if not trusted(name):
            return f"{name} could be changed by another user"
    for name, key in dirs.items():
        if not os.path.isdir(name) or dir_key(name) != key:
            return f"{name} changed since the plan was written"
    env = inherited(environ)
    for name in plan["unset"]:  # type: ignore[attr-defined]
        env.pop(name, None)
    env.update(plan["env"])  # type: ignore[call-overload]
    for name, source in plan["secrets"].items():  # type: ignore[attr-defined]
        if (value := secret(source)) is None:
            return f"${name}'s file {source} is missing, not one word, or not only ours to change"
        env[name] = value
    env[GATEWAY_ID_ENV] = token_hex(16)
    if port_in_use(plan["port"]):  # type: ignore[arg-type]
        return f"port {plan['port']} is taken"  # a gateway to adopt, or a stranger to name: the config's start
    try:
        for fd in (0, 1, 2):  # a closed one would be reused by the pipes below, and the child's dup2s mix them up
            os.fstat(fd)
    except OSError:
        return "clawsvc's stdin, stdout or stderr is closed"
    cwd: str = plan["cwd"]  # type: ignore[assignment]
    argv = [*plan["argv"], *unconfigured_flag(cwd)]  # type: ignore[misc]
    child = spawn(argv, env, cwd)
    if child is None:
        return f"{argv[0]} could not be executed"
    return EarlyGateway(child, argv, env, cwd, env[GATEWAY_ID_ENV])


class NotPlannable(Exception):
    """This start cannot be written down (a secret from no file, an untrusted file); str() says why."""


def save(argv: Sequence[str], launch_argv: Sequence[str], launch_env: Mapping[str, str], cwd: str, port: int,
         secret_files: Mapping[str, str], files: Iterable[str], dirs: Iterable[str]) -> str:
    """Write the plan for this start (argv: clawsvc's own arguments) into the cache dir; returns its path.
    NotPlannable or OSError when it cannot be written."""
    environ = os.environ
    if not enabled(environ):
        raise NotPlannable(f"{OFF_ENV}=off")
    base = inherited(environ)
    added = {name: value for name, value in launch_env.items() if base.get(name) != value and name != GATEWAY_ID_ENV}
    secrets = {name: secret_files.get(name, "") for name in added if is_secret_name(name)}
    if missing := sorted(name for name, source in secrets.items() if not source):
        raise NotPlannable(f"${', $'.join(missing)} not read from a file (from the keyring or the config)")
    plain = {name: value for name, value in added.items() if name not in secrets}
    gateway_argv = list(launch_argv)
    if gateway_argv[-1:] == [ALLOW_UNCONFIGURED]:
        gateway_argv.pop()
    files = sorted({*files, *secret_files.values()})
    if untrusted := [name for name in files if not trusted(name)]:
        raise NotPlannable(f"{untrusted[0]} could be changed by another user")
    plan = {"argv": gateway_argv, "cwd": cwd, "env": plain, "secrets": dict(secrets), "port": port,
            "unset": sorted(name for name in base if name not in launch_env),
            "files": {name: file_key(name) for name in files if name not in secret_files.values()},
            "dirs": {name: dir_key(name) for name in dirs}}
    directory = cache_dir(environ, os.geteuid() == 0)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if not trusted(directory):
        raise NotPlannable(f"{directory} could be changed by another user")
    path = os.path.join(directory, FILE)
    loaded = _load(path)
    plans = {} if isinstance(loaded, str) else loaded
    plans.pop(key := plan_key(argv, environ, os.getcwd()), None)
    plans[key] = plan
    while len(plans) > MAX_PLANS:
        del plans[next(iter(plans))]
    temp = f"{path}.{token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(marshal.dumps(plans))
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    return path
