"""Can the hardened system unit execute this clawsvc and its gateway? Judged as the unit sees the files.

The unit runs as user `clawsvc` with ProtectHome=yes (/home, /root and /run/user are empty to it) and
PrivateTmp=yes (its own /tmp and /var/tmp). A program under a home directory is made reachable with a drop-in:
ProtectHome=tmpfs (the home directories become empty 0755 tmpfs) plus BindReadOnlyPaths= of the program's
prefix (e.g. /root/.pyenv/versions/3.11.7). A program below /tmp, or behind a directory the service user may not
traverse, cannot be fixed that way: install refuses before writing anything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clawsvc import trust

HOME_HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"))  # ProtectHome=yes; tmpfs keeps them visible
TMP_HIDDEN = (Path("/tmp"), Path("/var/tmp"))  # PrivateTmp=yes: another /tmp, nothing to bind from
DROPIN_NAME = "10-clawsvc-reach.conf"
PREFIX_MARKERS = ("bin", "sbin", "node_modules")  # PREFIX/bin/python, PREFIX/node_modules/openclaw/...
VENV_FIX = ("python3 -m venv /opt/clawsvc/venv && /opt/clawsvc/venv/bin/pip install clawsvc (with /usr/bin/python3), "
            "then run /opt/clawsvc/venv/bin/clawsvc install --system")
GATEWAY_FIX = "run `clawsvc gateway-install` as root (it installs under /opt/clawsvc/gateway) and name that in " \
              "gateway.command"


class Unreachable(Exception):
    """The unit could not execute something it needs; str() is one line naming it and the fix."""


@dataclass(frozen=True)
class Need:
    """One file the unit must open: `what` names it for the admin, `fix` says what to do when it is hidden."""

    path: Path
    what: str
    fix: str
    execute: bool = True


@dataclass(frozen=True)
class Sandbox:
    """What the unit's ProtectHome=yes and PrivateTmp=yes hide (tests point them at scratch directories)."""

    home: tuple[Path, ...] = HOME_HIDDEN
    tmp: tuple[Path, ...] = TMP_HIDDEN


@dataclass(frozen=True)
class Account:
    """Whose permission bits apply: the service user (uid None when it does not exist yet: only `other` bits)."""

    uid: int | None = None
    gids: frozenset[int] = frozenset()


def interpreter_of(path: Path) -> Path | None:
    """The program a `#!` script runs (pip's console scripts point at their venv's python)."""
    try:
        with path.open("rb") as script:
            first = script.readline(4096)
    except OSError:
        return None
    words = first[2:].decode(errors="replace").split() if first.startswith(b"#!") else []
    return Path(words[0]) if words and words[0].startswith("/") else None


def clawsvc_needs(command: Sequence[str]) -> list[Need]:
    """What running `command` (clawsvc's ExecStart= prefix) opens: the script and its `#!` interpreter."""
    needs = [Need(Path(command[0]), "clawsvc" if len(command) == 1 else "the Python interpreter", VENV_FIX)]
    interpreter = interpreter_of(Path(command[0])) if len(command) == 1 else None
    if interpreter is not None:
        needs.append(Need(interpreter, f"the interpreter of {command[0]}", VENV_FIX))
    return needs


def gateway_needs(command: Sequence[str]) -> list[Need]:
    """gateway.command's program and, for node, its entry script (a bare name is looked up on PATH at start)."""
    if not command or not command[0].startswith("/"):
        return []
    needs = [Need(Path(command[0]), "gateway.command", GATEWAY_FIX)]
    if len(command) > 1 and command[1].startswith("/"):
        needs.append(Need(Path(command[1]), "the gateway entry script", GATEWAY_FIX, execute=False))
    return needs


def _under(path: Path, roots: Iterable[Path]) -> Path | None:
    return next((root for root in roots if path == root or root in path.parents), None)


def _prefix(path: Path, home: Path) -> Path:
    """The installation a hidden program belongs to (PREFIX of PREFIX/bin/x), strictly inside `home`."""
    for parent in path.parents:
        if parent.name in PREFIX_MARKERS:
            chosen = parent.parent
            break
    else:
        chosen = path.parent
    if chosen == home or chosen in home.parents:
        raise Unreachable(f"{path} is directly in {home}, which the unit cannot see (ProtectHome=yes)")
    return chosen


def _bindable(prefix: Path, need: Need) -> Path:
    """BindReadOnlyPaths= reads `:` as source:destination and a line ends at a newline: such a path cannot be
    written into the drop-in as one path."""
    odd = [c for c in str(prefix) if c in ':"\\' or not c.isprintable()]
    if odd:
        raise Unreachable(f"{need.what}: its prefix {str(prefix)!r} contains {odd[0]!r}, which "
                          f"BindReadOnlyPaths= cannot take; fix: {need.fix}")
    return prefix


def _allowed(st: os.stat_result, account: Account, bits: tuple[int, int, int]) -> bool:
    """owner/group/other permission as the kernel checks it for `account` (never root here)."""
    if account.uid is not None and st.st_uid == account.uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in account.gids:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


EXEC_BITS = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
READ_BITS = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def _check_walk(need: Need, path: Path, binds: Sequence[Path], account: Account, sandbox: Sandbox) -> None:
    """Every directory on the way must let the service user through (x); the file itself needs r (and x)."""
    for directory in reversed(path.parents):
        home = _under(directory, sandbox.home)
        if home is not None and not any(directory == b or b in directory.parents for b in binds):
            continue  # a directory ProtectHome=tmpfs creates (0755) on the way to a bind mount
        try:
            st = os.stat(directory)
        except OSError as exc:
            raise Unreachable(f"{need.what} {need.path}: cannot look at {directory}: {exc.strerror}; "
                              f"fix: {need.fix}") from None
        if not _allowed(st, account, EXEC_BITS):
            raise Unreachable(f"{need.what} {need.path}: the service user cannot enter {directory} "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); fix: chmod o+x {directory}, or {need.fix}")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise Unreachable(f"{need.what} {need.path}: {exc.strerror}; fix: {need.fix}") from None
    # A `#!` script is read by the kernel as the service user; a binary only needs x.
    wanted = [EXEC_BITS] if need.execute else [READ_BITS]
    if need.execute and interpreter_of(path) is not None:
        wanted.append(READ_BITS)
    if not all(_allowed(st, account, bits) for bits in wanted):
        raise Unreachable(f"{need.what} {need.path}: the service user may not "
                          f"{'run' if need.execute else 'read'} {path} (mode {stat.S_IMODE(st.st_mode):04o}); "
                          f"fix: {need.fix}")


def binds_for(needs: Sequence[Need], sandbox: Sandbox) -> tuple[Path, ...]:
    """The prefixes to bind into the unit so that every need under a home directory is visible."""
    found: list[Path] = []
    for need in needs:
        for path in dict.fromkeys([need.path.absolute(), Path(os.path.realpath(need.path))]):
            if _under(path, sandbox.tmp) is not None:
                raise Unreachable(f"{need.what} {need.path} is below {_under(path, sandbox.tmp)}, which the unit "
                                  f"replaces with its own (PrivateTmp=yes); fix: {need.fix}")
            home = _under(path, sandbox.home)
            if home is not None:
                found.append(_bindable(_prefix(path, home), need))
    unique = sorted(set(found), key=lambda p: len(p.parts))
    return tuple(p for p in unique if not any(q in p.parents for q in unique))


def check(needs: Sequence[Need], account: Account, sandbox: Sandbox = Sandbox()) -> tuple[Path, ...]:
    """The bind mounts the unit needs (empty when none); Unreachable when no drop-in can make it work."""
    binds = binds_for(needs, sandbox)
    for need in needs:
        for path in dict.fromkeys([need.path.absolute(), Path(os.path.realpath(need.path))]):
            _check_walk(need, path, binds, account, sandbox)
    _check_trusted(needs, binds)
    return binds


def _check_trusted(needs: Sequence[Need], binds: Sequence[Path]) -> None:
    """A bound prefix is what the unit runs: if another uid can change it (or a program in it, or a directory on
    the way), that uid runs code as the service user. Judged by clawsvc's trust rules (root's, when installing)."""
    for need in needs:
        inside = {b for p in (need.path.absolute(), Path(os.path.realpath(need.path))) for b in binds
                  if p == b or b in p.parents}
        for bind in sorted(inside):
            _trusted(trust.check_dir, bind, "BindReadOnlyPaths=", need.fix)
        if inside:
            _trusted(trust.check_file, need.path, need.what, need.fix)


def _trusted(check: Callable[[Path, str], object], path: Path, what: str, fix: str) -> None:
    try:
        check(path, what)
    except trust.TrustError as exc:
        raise Unreachable(f"{exc}; bound into the unit, it would let that user run code as the service user; "
                          f"or: {fix}") from None
    except OSError as exc:
        raise Unreachable(f"{what} {path}: cannot check {exc.filename}: {exc.strerror}; fix: {fix}") from None


def dropin_text(binds: Sequence[Path]) -> str:
    shown = ", ".join(str(b) for b in binds)
    return ("# Written by `clawsvc install`: the service runs programs below a home directory, which\n"
            "# ProtectHome=yes hides. tmpfs home directories plus read-only binds of just these prefixes keep\n"
            f"# the rest of /home and /root hidden: {shown}\n"
            "# A system-wide install (a venv on /usr/bin/python3 under /opt) needs no drop-in.\n"
            "[Service]\n"
            "ProtectHome=tmpfs\n"
            + "".join(f"BindReadOnlyPaths={_unit_path(b)}\n" for b in binds))


def _unit_path(path: Path) -> str:
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text
