"""Throwaway local users for tests that need a real uid other than root (and other than nobody, whose group is
shared with nothing): made with useradd, removed with userdel when the test ends, named so that parallel
workers never collide."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsvc import trust

NOGROUP = 65534
LOCK_RETRIES = 50  # useradd and userdel refuse while another one holds /etc/passwd's lock
_numbers = itertools.count()


def _admin(*argv: str) -> None:
    """Run useradd/usermod/userdel, again while another worker holds the passwd lock."""
    for _ in range(LOCK_RETRIES):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0:
            return
        if "lock" not in done.stderr:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        threading.Event().wait(0.1)  # a retry on contention, not a wait for something to happen
    raise RuntimeError(f"{' '.join(argv)}: /etc/passwd stayed locked")


def new_name() -> str:
    return f"clawt{os.getpid()}x{next(_numbers)}"


@contextlib.contextmanager
def throwaway_user(primary_group: str | None = None) -> Iterator[pwd.struct_passwd]:
    """A new user without a home; with its own private group (useradd -U), or with `primary_group` as its
    primary group. Removed (with its private group) afterwards."""
    name = new_name()
    group = ["-U"] if primary_group is None else ["-N", "-g", primary_group]
    _admin("useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", *group, name)
    try:
        yield pwd.getpwnam(name)
    finally:
        _admin("userdel", name)


def add_to_group(user: str, group: str) -> None:
    """`user` becomes a listed member of `group` (usermod -aG)."""
    _admin("usermod", "-a", "-G", group, user)


def shared_group(path: Path) -> None:
    """Give `path` a group other users are in, so that group-writable means writable by others: as root nogroup
    (uid 65534's primary group); as another user its own group, unless that is its private group (then skip)."""
    if os.geteuid() == 0:
        os.chown(path, -1, NOGROUP)
    elif trust.private_group(os.geteuid(), path.stat().st_gid):
        pytest.skip("your files' group is your private group: group-writable is still yours alone")


@contextlib.contextmanager
def reachable_dir() -> Iterator[Path]:
    """A new root-owned 0755 directory in /var/tmp (sticky): other users can reach what is below it, unlike
    pytest's tmp dirs (root's, 0700). Removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="clawsvc-test-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
