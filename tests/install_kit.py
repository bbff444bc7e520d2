"""`clawsvc install` as tests run it: staged below an install root (CLAWSVC_INSTALL_ROOT) or as a dry run, by a
clawsvc of the tests' own making, so that what they see does not depend on where the checkout lives.

install names the clawsvc it runs as in ExecStart= and first checks that the hardened system unit could execute
it (install_reach): one below /tmp or /var/tmp (PrivateTmp=yes) is refused outright, one below a home directory
gets a bind-mount drop-in. This checkout's own .venv may be in either place (a clone under /tmp, under /root or a
user's home), so tests run `launcher()`: a clawsvc below the running user's home (mode 0755, removed at exit),
reachable through the drop-in as a user's own venv would be. The refusal of one below /tmp is tested on purpose
by a test of its own.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from double.staged import owned_dir

from clawsvc.commands.install import plan as install
from clawsvc.commands.install import reach as install_reach

INSTALL_TIMEOUT = 120.0


def write_launcher(path: Path) -> Path:
    """An executable `clawsvc` that runs this environment's clawsvc: a shell script (so the unit's check sees
    /bin/sh as its interpreter) whose second line, a no-op string in Python, re-runs the file with this Python."""
    path.parent.mkdir(mode=0o755, exist_ok=True)
    path.write_text(f'#!/bin/sh\n"exec" {json.dumps(sys.executable)} "$0" "$@"\n'
                    "from clawsvc.cli import main\nraise SystemExit(main())\n")
    path.chmod(0o755)
    return path


@functools.cache
def _home_launcher() -> Path | str:
    home = Path.home()
    below = next((str(t) for t in install_reach.TMP_HIDDEN if home == t or t in home.parents), None)
    if below is not None or not os.access(home, os.W_OK | os.X_OK):
        return f"the home directory {home} is below {below} or not writable: no place the unit could see"
    return write_launcher(owned_dir(".clawsvc-test-", home) / "bin" / "clawsvc")


def launcher() -> tuple[str, ...]:
    """The clawsvc command tests install with (what ExecStart= names)."""
    found = _home_launcher()
    if isinstance(found, str):
        pytest.skip(found)
    return (str(found),)


def run_install(tmp_path: Path, *args: str, home: Path | None = None, exe: tuple[str, ...] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """`clawsvc install ARGS` below tmp_path/root, HOME=tmp_path/home unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "CLAWSVC_CONFIG")}
    env.update({install.INSTALL_ROOT_ENV: str(tmp_path / "root"), "HOME": str(home or tmp_path / "home")})
    return subprocess.run([*(exe or launcher()), "install", *args], capture_output=True, text=True, env=env,
                          check=False, timeout=INSTALL_TIMEOUT)


def files_below(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
