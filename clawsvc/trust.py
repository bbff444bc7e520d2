"""Trust rules for files and directories another local user could plant (sshd's StrictModes, for clawsvc).

A path is trusted when it, every directory on the way to it and every symlink followed to reach it belong
to root or to the user clawsvc runs as, and nobody else can write to them. `check-config` run as root judges
as the service would, trusting root and the `clawsvc` service user instead (judged_as_the_service).
A group/other-writable directory on the way is fine only with the sticky bit (/tmp): there
nobody can rename what another user owns, but a symlink in it owned by someone else is not followed (the
kernel's fs.protected_symlinks rule).

Group-writable is not "writable by others" when the group is its owner's private group (Debian's OpenSSH,
secure_permissions): the group bears the owner's name and is the owner's primary group, no other user has it as
primary group and it lists no member but the owner. That is what `useradd -U` makes and a umask of 002 (Debian's
and Ubuntu's default for users with such groups) leaves group-writable: ~/.cache at 0775 is its owner's alone.

Nothing here blocks: directories are walked with lstat(), secrets are opened O_NONBLOCK and read only if
fstat() says they are small regular files.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from clawsvc import pathwalk
from clawsvc.pathwalk import MAX_LINKS
from clawsvc.users import describe_uid, service_uid, user_name

log = logging.getLogger("clawsvc.trust")

SECRET_CAP = 64 * 1024  # a token or an API key is far smaller; anything bigger is the wrong file
GENERATED_TOKEN_NAME = "gateway-token"
OPEN_BY_OTHERS = stat.S_IRWXG | stat.S_IRWXO
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))

# None: root and our own euid. check-config sets it (judged_as_the_service) to judge as the service would.
_JUDGED_AS: ContextVar[frozenset[int] | None] = ContextVar("clawsvc_trust_judged_as", default=None)


class TrustError(Exception):
    """A path clawsvc refuses to trust or read; str() is one line naming the path and the fix (exit 78)."""


@dataclass(frozen=True)
class SecretFile:
    text: str
    mode: int  # st_mode of the file read, for the "readable by others" warning


@dataclass(frozen=True)
class RegularFile:
    data: bytes
    st: os.stat_result  # fstat() of the very file read


def file_kind(mode: int) -> str:
    """"a FIFO", "a directory"...: what a st_mode that is not a regular file is, for an error message."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


# ---------------------------------------------------------------- whose files are trusted

def trusted_uids() -> frozenset[int]:
    """Root and the euid we run as; in check-config as root, root and the service user instead."""
    return _JUDGED_AS.get() or frozenset({0, os.geteuid()})


@contextlib.contextmanager
def judged_as_the_service() -> Iterator[None]:
    """Within it, a root process judges paths as the `clawsvc` service user would: `sudo clawsvc check-config`
    accepts /var/lib/clawsvc owned by that user. Never used by `run` or a reload, which trust only root and
    their own euid (a root service must not trust files its gateway's account could plant)."""
    service = service_uid()
    if os.geteuid() != 0 or service is None:
        yield
        return
    token = _JUDGED_AS.set(frozenset({0, service}))
    try:
        yield
    finally:
        _JUDGED_AS.reset(token)


def _trusted(uid: int) -> bool:
    return uid in trusted_uids()


def _trusted_names() -> str:
    return " or ".join(user_name(uid) for uid in sorted(trusted_uids()))


def _rightful_owner() -> str:
    """Who should own what is refused: the non-root user trusted, else root."""
    return user_name(max(trusted_uids()))


def private_group(uid: int, gid: int) -> bool:
    """Whether gid is uid's user-private group (see the module's docstring), so that group-writable means
    writable by uid alone. Looked up each time: a member added to the group must count at once."""
    try:
        owner = pwd.getpwuid(uid)
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    if group.gr_name != owner.pw_name or owner.pw_gid != gid or any(m != owner.pw_name for m in group.gr_mem):
        return False
    return all(entry.pw_uid == uid for entry in pwd.getpwall() if entry.pw_gid == gid)


def writable_by_others(st: os.stat_result) -> bool:
    """Someone other than the owner may write it: other-writable, or group-writable by a group that is not the
    owner's private group."""
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not private_group(st.st_uid, st.st_gid)


# ---------------------------------------------------------------- walking a path like the kernel does

def _check_passage(directory: Path, st: os.stat_result, shown: str) -> None:
    """A directory clawsvc passes through: nobody but the trusted users may swap what lies below it."""
    if not stat.S_ISDIR(st.st_mode):
        return  # the next lstat() fails with ENOTDIR, reported by the caller as an I/O error
    if not _trusted(st.st_uid):
        raise TrustError(f"{shown}: directory {directory} on its path is owned by {describe_uid(st.st_uid)}, who "
                         f"could swap what lies below it; use a path whose directories belong to {_trusted_names()}")
    if writable_by_others(st) and not st.st_mode & stat.S_ISVTX:
        raise TrustError(f"{shown}: directory {directory} on its path is writable by group/others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); run: chmod go-w {directory}")


def _check_link(link: Path, st: os.stat_result, shown: str) -> None:
    if not _trusted(st.st_uid):
        raise TrustError(f"{shown}: symlink {link} on its path is owned by {describe_uid(st.st_uid)}, so clawsvc "
                         "does not follow it; remove the link and use the real path")


def resolve(path: Path, what: str, owners: set[int] | None = None, *, root_links_only: bool = False
            ) -> tuple[Path, os.stat_result | None]:
    """(the path with every symlink and `..` resolved, lstat of it or None if missing), checking each directory
    passed through and each symlink followed; their owners are added to `owners`. With `root_links_only`, a
    symlink of anyone but root is refused (for what root then changes). OSError for I/O trouble (ENOTDIR,
    EACCES...)."""
    shown = f"{what} {path}"
    seen = owners if owners is not None else set()

    def too_many() -> TrustError:
        return TrustError(f"{shown}: more than {MAX_LINKS} symlinks on its path; use the real path")

    def passage(directory: str, st: os.stat_result) -> None:
        _check_passage(Path(directory), st, shown)
        seen.add(st.st_uid)

    def link(link: str, st: os.stat_result) -> None:
        _check_link(Path(link), st, shown)
        if root_links_only and st.st_uid != 0:
            raise TrustError(f"{shown}: symlink {link} on its path belongs to {describe_uid(st.st_uid)}, who could "
                             "point it anywhere; root changes nothing through it: use the real path")
        seen.add(st.st_uid)

    real, st = pathwalk.walk(str(path.absolute()), passage, link, too_many)
    return Path(real), st


# ---------------------------------------------------------------- the object itself

def check_owned(path: Path, st: os.stat_result, what: str, *, directory: bool, mode_fix: str) -> None:
    """`path` is a directory (or a regular file) owned by a trusted user that nobody else can write."""
    wanted = "a directory" if directory else "a regular file"
    if not (stat.S_ISDIR if directory else stat.S_ISREG)(st.st_mode):
        raise TrustError(f"{what} {path} is {file_kind(st.st_mode)}, not {wanted}; use {wanted} there")
    fix = f"run: chown {_rightful_owner()}: {path} && chmod {mode_fix} {path}"
    if not _trusted(st.st_uid):
        raise TrustError(f"{what} {path} is owned by {describe_uid(st.st_uid)}, not by {_trusted_names()}; {fix}")
    if writable_by_others(st):
        caution = "check what was put in it, then " if directory else ""
        raise TrustError(f"{what} {path} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"{caution}{fix}")


def _check_dir(path: Path, st: os.stat_result, what: str) -> None:
    check_owned(path, st, what, directory=True, mode_fix="700")


def check_reach(path: Path | str, st: os.stat_result, controllers: set[int], what: str) -> None:
    """Root may open, read or change only what the non-root users who control the way to it (`controllers`: the
    owners of the directories passed and symlinks followed) own themselves: through the service user's directory
    or symlink, root's own /etc/shadow must not be what root reads and hands on, nor /etc what it chmods."""
    others = controllers - {0}
    if os.geteuid() != 0 or not others or st.st_uid in others:
        return
    via = ", ".join(describe_uid(uid) for uid in sorted(others))
    raise TrustError(f"{what} {path} belongs to {describe_uid(st.st_uid)} but is reached through a directory or "
                     f"symlink of {via}, who could point it anywhere; root does not open it: give it to that user, "
                     "or use a path whose directories belong to root")


def _too_big(path: Path | str, what: str, cap: int, size: int | None = None) -> TrustError:
    limit = f"{cap // 1024} KiB" if cap % 1024 == 0 else f"{cap} bytes"
    actual = f" ({size} bytes)" if size is not None else ""
    return TrustError(f"{what} {path} is larger than {limit}{actual}, the most clawsvc reads there; is it the "
                      "right file?")


def check_size(path: Path, st: os.stat_result, what: str, cap: int = SECRET_CAP) -> None:
    if st.st_size > cap:
        raise _too_big(path, what, cap, st.st_size)


def check_file(path: Path, what: str, mode_fix: str = "go-w", owners: set[int] | None = None
               ) -> os.stat_result | None:
    """Check a file and its path without opening it; None when it does not exist. The uids that could change
    what it holds (its owner, and those of every directory and symlink on its path) are added to `owners`."""
    _, st = resolve(path, what, owners)
    if st is not None:
        check_owned(path, st, what, directory=False, mode_fix=mode_fix)
        if owners is not None:
            owners.add(st.st_uid)
    return st


def check_dir(path: Path, what: str, *, root_links_only: bool = False) -> Path | None:
    """Check a directory and its path, changing nothing; its resolved path, or None when it does not exist
    (then the directories that do exist on the way to it were checked). See resolve for `root_links_only`."""
    resolved, st = resolve(path, what, root_links_only=root_links_only)
    if st is None:
        return None
    _check_dir(resolved, st, what)
    return resolved


# ---------------------------------------------------------------- reading a small regular file

def link_refused(path: Path | str, what: str) -> TrustError:
    return TrustError(f"{what} {path} is a symbolic link, which clawsvc never follows there; remove it and check "
                      "where it pointed")


def _check_regular(st: os.stat_result, shown: Path | str, what: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(shown))
    if stat.S_ISLNK(st.st_mode):
        raise link_refused(shown, what)
    if not stat.S_ISREG(st.st_mode):
        raise TrustError(f"{what} {shown} is {file_kind(st.st_mode)}, not a regular file; use a regular file there")


def _open_regular(path: Path | str, shown: Path | str, what: str, nofollow: bool, dir_fd: int | None) -> int:
    try:
        return os.open(path, READ_FLAGS | (os.O_NOFOLLOW if nofollow else 0), dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP and nofollow:  # O_NOFOLLOW met a symlink
            raise link_refused(shown, what) from None
        raise


def _read_fd(fd: int, shown: Path | str, what: str, cap: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, cap + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:  # the file grew after fstat()
            raise _too_big(shown, what, cap)
    return b"".join(chunks)


def read_regular(path: Path | str, what: str, *, cap: int, nofollow: bool, dir_fd: int | None = None,
                 shown: Path | str | None = None, vet: Callable[[os.stat_result], None] | None = None) -> RegularFile:
    """At most `cap` bytes of a regular file, never blocking: a FIFO, socket or device is refused before it is
    opened (and again after, by fstat), /dev/zero cannot fill memory. `vet` judges the fstat() of the file
    opened before anything is read; `shown` is the path messages name (default `path`, relative to dir_fd).
    TrustError for the wrong kind or size of file (or a symlink when `nofollow`); OSError (FileNotFoundError,
    IsADirectoryError...) for the rest."""
    shown = path if shown is None else shown
    _check_regular(os.stat(path, dir_fd=dir_fd, follow_symlinks=not nofollow), shown, what)
    fd = _open_regular(path, shown, what, nofollow, dir_fd)
    try:
        st = os.fstat(fd)
        _check_regular(st, shown, what)
        if vet is not None:
            vet(st)
        check_size(Path(shown), st, what, cap)
        return RegularFile(_read_fd(fd, shown, what, cap), st)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- private directories and secret files

def _make_dirs(missing: Path) -> None:
    """mkdir what is missing: the last one 0700, the ones above it 0755 (both narrowed by the umask)."""
    absent = [parent for parent in reversed(missing.parents) if not os.path.lexists(parent)]
    for directory, mode in [*((parent, 0o755) for parent in absent), (missing, 0o700)]:
        with contextlib.suppress(FileExistsError):  # made meanwhile: the check that follows decides
            os.mkdir(directory, mode)


def open_private_dir(path: Path, what: str) -> int:
    """An O_NOFOLLOW descriptor of the directory (created 0700 if missing) after checking it and its path;
    our own directory readable by others is tightened to 0700 through the descriptor. The caller closes it."""
    controllers: set[int] = set()
    resolved, st = resolve(path, what, controllers)
    if st is None:
        _make_dirs(resolved)
        resolved, st = resolve(path, what, controllers)  # again: a directory on the way may have appeared meanwhile
        if st is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(resolved))
    fd = os.open(resolved, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        _check_dir(resolved, st, what)
        check_reach(resolved, st, controllers, what)
        if st.st_mode & OPEN_BY_OTHERS and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o700)
            log.warning("%s %s was accessible to other users (mode %04o); set it to 0700", what, resolved,
                        stat.S_IMODE(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_dir(path: Path, what: str) -> int | None:
    """An O_NOFOLLOW descriptor of an existing directory, checked like check_dir (and, as root, reached only
    through what root or its owner controls); None when it does not exist. Nothing is created or changed."""
    controllers: set[int] = set()
    resolved, st = resolve(path, what, controllers)
    if st is None:
        return None
    fd = os.open(resolved, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        _check_dir(resolved, st, what)
        check_reach(resolved, st, controllers, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_secret(name: Path | str, shown: Path, what: str, dir_fd: int | None,
                 controllers: set[int]) -> SecretFile:
    if dir_fd is not None:
        controllers = controllers | {os.fstat(dir_fd).st_uid}

    def vet(st: os.stat_result) -> None:
        check_owned(shown, st, what, directory=False, mode_fix="600")
        check_reach(shown, st, controllers, what)

    found = read_regular(name, what, cap=SECRET_CAP, nofollow=True, dir_fd=dir_fd, shown=shown, vet=vet)
    try:
        return SecretFile(found.data.decode("utf-8"), found.st.st_mode)
    except UnicodeDecodeError:
        raise TrustError(f"{what} {shown} is not UTF-8 text; use a file holding only the secret") from None


def read_secret(path: Path, what: str) -> SecretFile:
    """The text of a small regular file that a trusted user owns and nobody else can write, reached through
    trusted directories and symlinks. TrustError for a planted or wrong file; OSError (e.g. missing) for the rest."""
    controllers: set[int] = set()
    resolved, st = resolve(path, what, controllers)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    check_owned(path, st, what, directory=False, mode_fix="600")  # before opening: not even a device is opened
    check_reach(path, st, controllers, what)
    return _read_secret(resolved, path, what, None, controllers)


def read_secret_at(dir_fd: int, name: str, shown: Path, what: str) -> SecretFile:
    """Like read_secret for `name` in a directory already checked (open_dir, open_private_dir); a symlink is
    refused."""
    return _read_secret(name, shown, what, dir_fd, set())


def create_secret_at(dir_fd: int, name: str, data: bytes) -> None:
    """Write a new file 0600 in a checked directory; FileExistsError when `name` (or a link there) exists."""
    fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
