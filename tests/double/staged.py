"""What tests name in gateway.command, staged once per process into a directory of their own (mode 0755, removed
at exit): this environment's Python and the double's scripts, never paths inside the checkout.

`run` and `check-config` trust gateway.command only if nobody but root and the running user can change it or a
directory on the way to it (clawsvc/trust.py). The checkout, and its .venv, may sit below a group-writable
directory (a umask-002 clone, a `git archive`); the staged copies do not depend on where the checkout lives or
on its modes. The staged Python is a venv on this interpreter's base Python (a symlink, as `python -m venv`
makes) that sees this environment's packages: websockets for the double, clawsvc itself.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import site
import sysconfig
import tempfile
import venv
from pathlib import Path

DOUBLE_DIR = Path(__file__).resolve().parent
DOUBLE_FILES = ("gateway_double.py", "double_protocol.py", "double_session.py")


def _private_modes(root: Path) -> None:
    """Directories 0755, files without group/other write: set here, whatever the umask was."""
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        path.chmod(0o755 if path.is_dir() else path.stat().st_mode & 0o755)


def owned_dir(prefix: str, parent: Path | None = None) -> Path:
    """A new directory, mode 0755 (another uid a test runs may run what is in it), removed when this process
    exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # not in a forked child that exits through atexit
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
    return path


@functools.cache
def _root() -> Path:
    return owned_dir("clawsvc-test-programs-")


@functools.cache
def python() -> str:
    """A Python with this environment's packages, for gateway.command."""
    target = _root() / "python"
    venv.EnvBuilder(symlinks=True).create(target)
    purelib = Path(sysconfig.get_path("purelib", "venv", vars={"base": str(target), "platbase": str(target)}))
    adds = "; ".join(f"site.addsitedir({path!r})" for path in site.getsitepackages())
    (purelib / "clawsvc-tests.pth").write_text(f"import site; {adds}\n")
    _private_modes(target)
    return str(target / "bin" / "python")


@functools.cache
def double_script() -> str:
    """gateway_double.py and the modules it imports, copied."""
    target = _root() / "double"
    target.mkdir()
    for name in DOUBLE_FILES:
        shutil.copyfile(DOUBLE_DIR / name, target / name)
    _private_modes(target)
    return str(target / DOUBLE_FILES[0])
