"""The one check of gateway.command before anything of it runs, used by every path that starts or judges a
gateway: the spawn, preflight (`run`, `check-config`, a reload), doctor, install, upgrade and its canary.

Order matters. First the program, the node and the entry script it runs, and the package.json next to that
script are judged by clawsvc.trust, before any of them is run, read or parsed: each must belong to a trusted
user (root, or the user judged as, see trust.trusted_uids) and be writable by nobody else, along its whole path.
A program of any other uid is refused without being run. Then node's version and the package's engines.node are
examined with no more privilege than whoever could have written what is examined: when root finds a file of a
non-root user on any of those paths (`sudo check-config` judging as the service user), the examination runs in a
child as that user (node.examine_as); only an all-root chain is examined by root itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clawsvc import trust
from clawsvc.boundedrun import Account
from clawsvc.gateway.node import NodeFacts, ProvisionError, examine, examine_as, verdict

log = logging.getLogger("clawsvc.gateway.process")

FIX = "run `clawsvc gateway-install` and set gateway.command to the paths it prints"
SCRIPT_SUFFIXES = (".mjs", ".cjs", ".js", ".py")
SHEBANG_CAP = 256  # bytes of a script's first line looked at
ENV_NODE = (b"#!/usr/bin/env", b"node")
WHAT = "gateway.command"


class SpawnError(Exception):
    """The gateway cannot be started; str() is one line naming the path and the fix, never a secret."""


@dataclass(frozen=True)
class Vetted:
    """gateway.command as checked: argv with absolute paths, and for a node gateway what was found out."""

    argv: list[str]
    node: str | None = None
    entry: Path | None = None
    facts: NodeFacts | None = None  # None: not a node gateway, or its versions could not be examined
    examined_as: int | None = None  # the uid the examination ran as


def _executable(name: str, path_env: str | None) -> str:
    if os.sep not in name:
        found = shutil.which(name, path=path_env)
        if found is None:
            raise SpawnError(f"gateway command {name!r} not found on PATH; {FIX}")
        return os.path.abspath(found)
    target = Path(name).absolute()
    if not target.exists():
        raise SpawnError(f"gateway command {target} does not exist; {FIX}")
    if not target.is_file() or not os.access(target, os.X_OK):
        raise SpawnError(f"gateway command {target} is not an executable file; {FIX}")
    return str(target)


def _trusted(path: str | Path, owners: set[int]) -> None:
    """Judge `path` (and its directories and links) before anything reads or runs it; note who owns them."""
    try:
        trust.check_file(Path(path), WHAT, owners=owners)
    except trust.TrustError as exc:
        raise SpawnError(str(exc)) from None
    except OSError as exc:
        raise SpawnError(f"{WHAT} {path}: cannot check it: {exc.strerror or exc}") from None


def is_node(executable: str) -> bool:
    return Path(executable).name.startswith("node")


def _env_node_script(program: str) -> bool:
    """Whether the (already judged) program starts with `#!/usr/bin/env node`, read without blocking."""
    try:
        fd = os.open(program, trust.READ_FLAGS)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since it was judged
            return False
        return os.read(fd, SHEBANG_CAP).split(b"\n", 1)[0].split()[:2] == list(ENV_NODE)
    except OSError:
        return False
    finally:
        os.close(fd)


def _node_and_entry(argv: list[str], path_env: str | None) -> tuple[str, Path] | None:
    """(node, entry script) when argv is `node script ...` or a `#!/usr/bin/env node` script."""
    if is_node(argv[0]):
        if len(argv) < 2 or argv[1].startswith("-"):
            return None
        entry = Path(argv[1])
        if not entry.is_file():
            raise SpawnError(f"gateway entry script {entry} does not exist; {FIX}")
        return argv[0], entry
    if _env_node_script(argv[0]) and (node := shutil.which("node", path=path_env)):
        return os.path.abspath(node), Path(argv[0]).resolve()
    return None


def _examiner(owners: set[int]) -> Account | None:
    """Who examines a chain with these owners: None for ourselves (all root's, or we are not root), else the
    one non-root owner (the only other uid root trusts, the service user it judges as)."""
    others = owners - {0}
    if os.geteuid() != 0 or not others:
        return None
    try:
        (uid,) = others  # trust admits one non-root uid at most
        return Account.of(uid)
    except (ValueError, KeyError):
        raise SpawnError(f"{WHAT}: its files belong to users clawsvc cannot run it as (uids "
                         f"{', '.join(map(str, sorted(others)))}); give them to root") from None


def vet_command(argv: Sequence[str], env: Mapping[str, str]) -> Vetted:
    """argv judged, made absolute and (for a node gateway) examined; SpawnError when it must not or cannot run
    this gateway. A node whose version cannot be found out is only logged: the gateway's start will tell."""
    owners: set[int] = set()
    program = _executable(argv[0], env.get("PATH"))
    _trusted(program, owners)
    words = [program, *argv[1:]]
    if is_node(program) and len(words) > 1 and not words[1].startswith("-"):
        words[1] = os.path.abspath(words[1])
    if len(words) > 1 and words[1].endswith(SCRIPT_SUFFIXES) and not os.path.isfile(words[1]):
        raise SpawnError(f"gateway entry script {words[1]} does not exist; {FIX}")
    if len(words) > 1 and os.path.isabs(words[1]) and os.path.isfile(words[1]):
        _trusted(words[1], owners)  # the script an interpreter runs is the program, too
    found = _node_and_entry(words, env.get("PATH"))
    if found is None:
        return Vetted(words)
    node, entry = found
    for path in (node, entry, entry.parent / "package.json"):
        _trusted(path, owners)
    account = _examiner(owners)
    try:
        facts = examine(node, entry) if account is None else examine_as(account, node, entry)
    except ProvisionError as exc:
        log.warning("cannot check node's version against the gateway's needs: %s", exc)
        return Vetted(words, node, entry)
    problem = verdict(facts)
    if problem:
        raise SpawnError(f"{node}: {problem} and set gateway.command to the paths it prints")
    return Vetted(words, node, entry, facts, os.geteuid() if account is None else account.uid)


def check_command(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """vet_command's argv: what the spawn runs."""
    return vet_command(argv, env).argv
