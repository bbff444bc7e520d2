"""Encrypted systemd credentials for a clawsvc unit, the headless store of `clawsvc keys`.

Layout (uninstall and the docs rely on it): `/etc/credstore.encrypted/clawsvc/<stem>/<credname>` (root, 0600;
directories 0700), written by `systemd-creds encrypt --name=<credname> - FILE` with the value on stdin, and the
drop-in `/etc/systemd/system/<unit>.d/50-clawsvc-credentials.conf` with one `LoadCredentialEncrypted=` per file,
regenerated from the directory on every change and removed when it is empty. <stem> is the unit name without
`.service`; <credname> is what clawsvc reads from $CREDENTIALS_DIRECTORY (`gateway-token`, `<provider>-api-key`).
Every path is below $CLAWSVC_INSTALL_ROOT when that is set (packaging, tests); the drop-in names the real paths.
The value travels only over a pipe: never in argv, a plain file, a log line or an exception message.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from clawsvc.config.instances import INSTALL_ROOT_ENV as INSTALL_ROOT_ENV
from clawsvc.config.instances import install_root
from clawsvc.secrets.errors import SecretError
from clawsvc.secrets.files import CredentialReader, credential, single_value
from clawsvc.secrets.providers import provider_credential
from clawsvc.secrets.tokens import TOKEN_CREDENTIAL, TOKEN_USERNAME
from clawsvc.text import cut

CREDSTORE = Path("/etc/credstore.encrypted")
UNIT_DIR = Path("/etc/systemd/system")
DROPIN_NAME = "50-clawsvc-credentials.conf"
TOOL = "systemd-creds"
TOOL_TIMEOUT = 30.0
UNIT = re.compile(r"clawsvc(@[a-z0-9][a-z0-9_-]{0,31})?\.service")
CREDNAME = re.compile(r"[a-z][a-z0-9_-]*")
LOAD_KEY = "LoadCredentialEncrypted="


class CredstoreError(SecretError):
    """The encrypted credential store cannot do what was asked; str() is one line without the value."""


def credential_name(key: str) -> str:
    """`gateway-token` for the gateway token, `<provider>-api-key` for a provider's API key."""
    return TOKEN_CREDENTIAL if key == TOKEN_USERNAME else provider_credential(key)


def key_name(credname: str) -> str:
    """The `clawsvc keys` name stored as credential `credname` (the inverse of credential_name)."""
    return TOKEN_USERNAME if credname == TOKEN_CREDENTIAL else credname.removesuffix("-api-key")


def _on_disk(path: Path) -> Path:
    return install_root() / path.relative_to(path.anchor)


def _stem(unit: str) -> str:
    if not UNIT.fullmatch(unit):
        raise CredstoreError(f"{unit!r} is not a clawsvc unit (clawsvc.service or clawsvc@NAME.service)")
    return unit.removesuffix(".service")


def credential_dir(unit: str) -> Path:
    """Where the unit's encrypted credentials live, as systemd sees the path."""
    return CREDSTORE / "clawsvc" / _stem(unit)


def dropin_path(unit: str) -> Path:
    """The drop-in loading them, as systemd sees the path."""
    _stem(unit)
    return UNIT_DIR / f"{unit}.d" / DROPIN_NAME


def live_root() -> bool:
    """Whether the files are the running system's: the root is `/` and systemd is the init system."""
    return install_root() == Path("/") and Path("/run/systemd/system").is_dir()


def unusable_reason() -> str | None:
    """Why credentials cannot be stored here (one line with the fix), or None when they can."""
    if os.geteuid() != 0:
        return "encrypted credentials are root's: run it with sudo"
    if shutil.which(TOOL) is None:
        return f"{TOOL} is not installed (it comes with systemd 250 and later)"
    return None


@contextlib.contextmanager
def _errors(doing: str) -> Iterator[None]:
    try:
        yield
    except PermissionError as exc:
        raise CredstoreError(f"cannot {doing}: permission denied on {exc.filename} (run it as root)") from None
    except OSError as exc:
        raise CredstoreError(f"cannot {doing}: {exc.strerror or exc.__class__.__name__}"
                             + (f" ({exc.filename})" if exc.filename else "")) from None


def _private_dir(path: Path) -> None:
    """A root-owned 0700 directory that is not a symlink, created if absent."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    found = path.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != 0:
        raise CredstoreError(f"{path} must be a directory owned by root; move it away and retry")
    if stat.S_IMODE(found.st_mode) != 0o700:
        path.chmod(0o700)


def _run_tool(argv: list[str], value: bytes | None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([TOOL, *argv], input=value if value is not None else b"", capture_output=True,
                              timeout=TOOL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise CredstoreError(f"`{TOOL} {argv[0]}` did not finish within {TOOL_TIMEOUT:g}s") from None
    except OSError as exc:
        raise CredstoreError(f"cannot run {TOOL}: {exc.strerror or exc}") from None


def _tool_failure(done: subprocess.CompletedProcess[bytes]) -> str:
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return f"exit {done.returncode}" + (f": {cut(lines[-1].strip(), 200)}" if lines else "")


def store(unit: str, name: str, value: str) -> Path:
    """Encrypt `value` as credential `name` of `unit` (replacing an older one) and rewrite the drop-in.
    Returns the file as systemd sees it."""
    why = unusable_reason()
    if why:
        raise CredstoreError(why)
    if not CREDNAME.fullmatch(name):
        raise CredstoreError(f"{name!r} is not a credential name")
    target = credential_dir(unit) / name
    directory = _on_disk(target.parent)
    with _errors(f"store credential {name} in {target.parent}"):
        for parent in (_on_disk(CREDSTORE / "clawsvc"), directory):
            _private_dir(parent)
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        old_umask = os.umask(0o077)
        try:
            done = _run_tool(["encrypt", f"--name={name}", "-", str(tmp)], value.encode())
            if done.returncode != 0:
                raise CredstoreError(f"`{TOOL} encrypt --name={name}` failed ({_tool_failure(done)})")
            os.chown(tmp, 0, 0)
            tmp.chmod(0o600)
            tmp.replace(directory / name)
        finally:
            os.umask(old_umask)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    write_dropin(unit)
    return target


def delete(unit: str, name: str) -> Path | None:
    """Remove credential `name` of `unit` and rewrite the drop-in; the removed file, or None if there was none."""
    path = stored_credentials(unit).get(name)
    if path is not None:
        with _errors(f"remove {path}"):
            path.unlink()
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # only when it was the last one
    write_dropin(unit)  # also drops a line whose file had gone
    return path


def stored_credentials(unit: str) -> dict[str, Path]:
    """{credname: file on disk} of the unit's encrypted credentials; {} when there are none.
    CredstoreError when the directory cannot be read (not root)."""
    directory = _on_disk(credential_dir(unit))
    with _errors(f"read {directory}"):
        try:
            _not_a_link(directory)
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return {}
    return {n: directory / n for n in names if CREDNAME.fullmatch(n) and (directory / n).is_file()}


def _not_a_link(directory: Path) -> None:
    """Listing, deleting or rm -r through a symlink planted at the store's place would reach what it points at."""
    for path in (directory.parent, directory):  # .../clawsvc and .../clawsvc/<stem>
        if path.is_symlink():
            raise CredstoreError(f"{path} is a symbolic link (to {os.readlink(path)}), not the directory clawsvc "
                                 "made; remove the link, check where it points, then rerun")


def dropin_lines(unit: str) -> dict[str, str]:
    """{credname: path as written} of the `LoadCredentialEncrypted=` lines in the unit's clawsvc drop-in."""
    try:
        text = _on_disk(dropin_path(unit)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    lines = (line.strip().removeprefix(LOAD_KEY) for line in text.splitlines() if line.startswith(LOAD_KEY))
    return dict(line.partition(":")[::2] for line in lines)


def render_dropin(unit: str, names: list[str]) -> str:
    directory = credential_dir(unit)
    head = (f"# Written by `clawsvc keys`: the encrypted credentials in {directory}.\n"
            "# Regenerated on every `clawsvc keys set` / `keys delete`: edits here are lost.\n"
            f"# Credentials are set up when the unit starts: `systemctl restart {unit}` delivers a change.\n"
            "[Service]\n")
    return head + "".join(f"{LOAD_KEY}{name}:{directory / name}\n" for name in names)


def write_dropin(unit: str) -> Path | None:
    """Rewrite the drop-in from the directory's contents (removed when there is nothing to load); the drop-in's
    on-disk path when it changed, else None. The caller runs `systemctl daemon-reload` (see live_root)."""
    names = sorted(stored_credentials(unit))
    path = _on_disk(dropin_path(unit))
    with _errors(f"write {path}"):
        if not names:
            return path if _remove_dropin(path) else None
        text = render_dropin(unit, names)
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if path.read_text(encoding="utf-8") == text:
                return None
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(path)
    return path


def _remove_dropin(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # only when no other drop-in is there
    return True


def remove_unit_credentials(unit: str) -> list[Path]:
    """Remove the unit's encrypted credentials and their drop-in (for `clawsvc uninstall`); the on-disk paths
    removed. The caller runs `systemctl daemon-reload`."""
    removed = []
    directory = _on_disk(credential_dir(unit))
    with _errors(f"remove {directory}"):
        _not_a_link(directory)
        if directory.is_dir():
            removed += [directory / n for n in sorted(os.listdir(directory))]
            shutil.rmtree(directory)
            removed.append(directory)
        path = _on_disk(dropin_path(unit))
        if _remove_dropin(path):
            removed.append(path)
    return removed


def decrypts(name: str, path: Path) -> str | None:
    """None when `systemd-creds decrypt` accepts the file as credential `name` (the value is read from the pipe
    and dropped), else why not, in one line."""
    done = _run_tool(["decrypt", f"--name={name}", str(path), "-"], None)
    return None if done.returncode == 0 else _tool_failure(done)


def reader(unit: str) -> CredentialReader:
    """What the unit's gateway finds in $CREDENTIALS_DIRECTORY, read from outside the unit (`clawsvc openclaw`):
    that directory when set, else (as root) the unit's encrypted credential decrypted here, over a pipe."""
    return functools.partial(_delivered_or_decrypted, unit)


def _delivered_or_decrypted(unit: str, name: str) -> str | None:
    delivered = credential(name)
    if delivered is not None or os.geteuid() != 0:
        return delivered
    path = _on_disk(credential_dir(unit)) / name
    if not CREDNAME.fullmatch(name) or not path.is_file():
        return None
    done = _run_tool(["decrypt", f"--name={name}", str(path), "-"], None)
    if done.returncode != 0:
        raise CredstoreError(f"cannot decrypt credential {name} of {unit} ({path}): {_tool_failure(done)}")
    value, problem = single_value(done.stdout.decode("utf-8", "replace"))
    if problem is not None:
        raise CredstoreError(f"credential {name} of {unit} ({path}) does not hold one value: it is {problem}")
    return value
