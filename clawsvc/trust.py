"""Trust rules for files and directories another local user could plant (sshd's StrictModes, for clawsvc).

A path is trusted when it, every directory on the way to it and every symlink followed to reach it belong
to root or to the user clawsvc runs as (for root also the `clawsvc` service user), and nobody else can
write to them. A group/other-writable directory on the way is fine only with the sticky bit (/tmp): there
nobody can rename what another user owns, but a symlink in it owned by someone else is not followed (the
kernel's fs.protected_symlinks rule).

Nothing here blocks: directories are walked with lstat(), secrets are opened O_NONBLOCK and read only if
fstat() says they are small regular files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from clawsvc.config import Config, ConfigError

log = logging.getLogger("clawsvc.trust")

SECRET_CAP = 64 * 1024  # a token or an API key is far smaller; anything bigger is the wrong file
MAX_LINKS = 40  # the kernel's limit on symlinks followed while resolving one path
GENERATED_TOKEN_NAME = "gateway-token"
WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
OPEN_BY_OTHERS = stat.S_IRWXG | stat.S_IRWXO
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
SERVICE_USER = "clawsvc"  # the user the system units run as (units/clawsvc.sysusers.conf)


class TrustError(ConfigError):
    """A path clawsvc refuses to trust; str() is one line naming the path and the fix (exit 78)."""


@dataclass(frozen=True)
class SecretFile:
    text: str
    mode: int  # st_mode of the file read, for the "readable by others" warning


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _me() -> str:
    return _user_name(os.geteuid())


def _service_uid() -> int | None:
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def _trusted(uid: int) -> bool:
    """Root, ourselves, and for root also the service user the units run as: `sudo clawsvc check-config`
    must judge /var/lib/clawsvc the way the service itself will, and root can become that user anyway."""
    me = os.geteuid()
    return uid in (0, me) or (me == 0 and uid == _service_uid())


def _owner(uid: int) -> str:
    return f"uid {uid} ({_user_name(uid)})"


def _kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket", stat.S_ISLNK: "a symbolic link"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


# ---------------------------------------------------------------- walking a path like the kernel does

def _check_passage(directory: Path, st: os.stat_result, shown: str) -> None:
    """A directory clawsvc passes through: nobody but root and us may swap what lies below it."""
    if not stat.S_ISDIR(st.st_mode):
        return  # the next lstat() fails with ENOTDIR, reported by the caller as an I/O error
    if not _trusted(st.st_uid):
        raise TrustError(f"{shown}: directory {directory} on its path is owned by {_owner(st.st_uid)}, who could "
                         f"swap what lies below it; use a path whose directories belong to root or {_me()}")
    if st.st_mode & WRITABLE_BY_OTHERS and not st.st_mode & stat.S_ISVTX:
        raise TrustError(f"{shown}: directory {directory} on its path is writable by group/others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); run: chmod go-w {directory}")


def _check_link(link: Path, st: os.stat_result, shown: str) -> None:
    if not _trusted(st.st_uid):
        raise TrustError(f"{shown}: symlink {link} on its path is owned by {_owner(st.st_uid)}, so clawsvc does "
                         "not follow it; remove the link and use the real path")


def resolve(path: Path, what: str) -> tuple[Path, os.stat_result | None]:
    """(the path with every symlink resolved, lstat of it or None if missing), checking each directory passed
    through and each symlink followed. OSError for I/O trouble (ENOTDIR, EACCES...)."""
    shown = f"{what} {path}"
    current = Path("/")
    _check_passage(current, os.lstat(current), shown)
    todo = list(reversed(path.absolute().parts[1:]))
    links = 0
    st: os.stat_result | None = os.lstat(current)
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        candidate = current / name
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return candidate.joinpath(*reversed(todo)), None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                raise TrustError(f"{shown}: more than {MAX_LINKS} symlinks on its path; use the real path")
            _check_link(candidate, st, shown)
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
            todo.extend(reversed(target.parts[1:] if target.is_absolute() else target.parts))
            continue
        if todo:
            _check_passage(candidate, st, shown)
        current = candidate
    return current, st


# ---------------------------------------------------------------- the object itself

def _check_dir(path: Path, st: os.stat_result, what: str) -> None:
    fix = f"run: chown {_me()}: {path} && chmod 700 {path}"
    if not stat.S_ISDIR(st.st_mode):
        raise TrustError(f"{what} {path} is {_kind(st.st_mode)}, not a directory; use a directory there")
    if not _trusted(st.st_uid):
        raise TrustError(f"{what} {path} is owned by {_owner(st.st_uid)}, not by root or {_me()}; {fix}")
    if st.st_mode & WRITABLE_BY_OTHERS:
        raise TrustError(f"{what} {path} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"check what was put in it, then {fix}")


def _check_file(path: Path, st: os.stat_result, what: str, mode_fix: str) -> None:
    fix = f"run: chown {_me()}: {path} && chmod {mode_fix} {path}"
    if not stat.S_ISREG(st.st_mode):
        raise TrustError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file; use a regular file there")
    if not _trusted(st.st_uid):
        raise TrustError(f"{what} {path} is owned by {_owner(st.st_uid)}, not by root or {_me()}; {fix}")
    if st.st_mode & WRITABLE_BY_OTHERS:
        raise TrustError(f"{what} {path} is writable by group/others (mode {stat.S_IMODE(st.st_mode):04o}); {fix}")


def _check_size(path: Path, st: os.stat_result, what: str) -> None:
    if st.st_size > SECRET_CAP:
        raise TrustError(f"{what} {path} is {st.st_size} bytes, far more than a secret (at most "
                         f"{SECRET_CAP // 1024} KiB); use a file holding only the secret")


def check_file(path: Path, what: str, mode_fix: str = "go-w") -> os.stat_result | None:
    """Check a file and its path without opening it; None when it does not exist."""
    _, st = resolve(path, what)
    if st is not None:
        _check_file(path, st, what, mode_fix)
    return st


def check_dir(path: Path, what: str) -> Path | None:
    """Check a directory and its path, changing nothing; its resolved path, or None when it does not exist
    (then the directories that do exist on the way to it were checked)."""
    resolved, st = resolve(path, what)
    if st is None:
        return None
    _check_dir(resolved, st, what)
    return resolved


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
    resolved, st = resolve(path, what)
    if st is None:
        _make_dirs(resolved)
        resolved, st = resolve(path, what)  # again: a directory on the way may have appeared meanwhile
        if st is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(resolved))
    fd = os.open(resolved, DIR_FLAGS)
    try:
        st = os.fstat(fd)
        _check_dir(resolved, st, what)
        if st.st_mode & OPEN_BY_OTHERS and st.st_uid == os.geteuid():
            os.fchmod(fd, 0o700)
            log.warning("%s %s was accessible to other users (mode %04o); set it to 0700", what, resolved,
                        stat.S_IMODE(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_capped(fd: int, path: Path, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, SECRET_CAP + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > SECRET_CAP:
            raise TrustError(f"{what} {path} is larger than {SECRET_CAP // 1024} KiB, far more than a secret; "
                             "use a file holding only the secret")
    return b"".join(chunks)


def _link_refused(path: Path, what: str) -> TrustError:
    return TrustError(f"{what} {path} is a symbolic link, which clawsvc never follows there; remove it and check "
                      "where it pointed")


def _read_fd(fd: int, path: Path, what: str) -> SecretFile:
    st = os.fstat(fd)
    _check_file(path, st, what, "600")
    _check_size(path, st, what)
    data = _read_capped(fd, path, what)
    try:
        return SecretFile(data.decode("utf-8"), st.st_mode)
    except UnicodeDecodeError:
        raise TrustError(f"{what} {path} is not UTF-8 text; use a file holding only the secret") from None


def _open_secret(name: Path | str, shown: Path, what: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise _link_refused(shown, what) from None
        raise


def read_secret(path: Path, what: str) -> SecretFile:
    """The text of a small regular file that root or we own and nobody else can write, reached through trusted
    directories and symlinks. TrustError for a planted or wrong file; OSError (e.g. missing) for the rest."""
    resolved, st = resolve(path, what)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    _check_file(path, st, what, "600")  # before opening: a socket or a device must not even be opened
    fd = _open_secret(resolved, path, what, None)
    try:
        return _read_fd(fd, path, what)
    finally:
        os.close(fd)


def read_secret_at(dir_fd: int, name: str, shown: Path, what: str) -> SecretFile:
    """Like read_secret for `name` in a directory already checked (open_private_dir); a symlink is refused."""
    fd = _open_secret(name, shown, what, dir_fd)
    try:
        return _read_fd(fd, shown, what)
    finally:
        os.close(fd)


def create_secret_at(dir_fd: int, name: str, data: bytes) -> None:
    """Write a new file 0600 in a checked directory; FileExistsError when `name` (or a link there) exists."""
    fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the config as a whole

def _check_generated_token(state_dir: Path) -> None:
    path = state_dir / GENERATED_TOKEN_NAME
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    what = "generated gateway token"
    if stat.S_ISLNK(st.st_mode):
        raise _link_refused(path, what)
    _check_file(path, st, what, "600")
    _check_size(path, st, what)


def _check_token_file(path: Path) -> None:
    st = check_file(path, "auth.token_file", "600")
    if st is None:
        raise TrustError(f"auth.token_file {path} does not exist; create it (mode 0600, one line holding the token) "
                         "or set auth.token_file: null")
    _check_size(path, st, "auth.token_file")


def check_config_paths(config: Config) -> None:
    """Raise TrustError when a path the config names (config file, state dir, token file) is not ours."""
    try:
        if config.source is not None:
            check_file(config.source, "config file")
        state_dir = check_dir(config.gateway.state_dir.absolute(), "gateway.state_dir")
        token_file = config.auth.token_file
        if token_file is not None:
            _check_token_file(token_file)
        if state_dir is not None and token_file is None:
            _check_generated_token(state_dir)
    except OSError as exc:
        raise TrustError(f"cannot check {exc.filename}: {exc.strerror or exc.__class__.__name__}") from None
