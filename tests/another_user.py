"""Tests that run Python as another uid (nobody) through setpriv: they need root, setpriv, and this environment's
Python and clawsvc readable by that uid. A checkout or venv below a directory only its owner may enter (/root is
0700) gives no such thing: there they skip, saying why; from any checkout others may read they run (.ci/run also
runs them from a clone below /tmp).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NOBODY = 65534
REPO = Path(__file__).resolve().parent.parent
PROBE_TIMEOUT = 60.0


@functools.cache
def why_not() -> str | None:
    """None when this process can run clawsvc as uid 65534; else the one-line reason."""
    if os.geteuid() != 0:
        return "needs root to act as another uid"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to act as another uid"
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                            "-c", "import clawsvc, yaml"], env={"PATH": os.defpath, "PYTHONPATH": str(REPO)}, cwd="/",
                           capture_output=True, text=True, timeout=PROBE_TIMEOUT, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return (f"uid {NOBODY} cannot run {sys.executable} with clawsvc from {REPO} ({last}): this checkout or its "
                "venv is below a directory other users may not enter")
    return None


needs_another_user = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")
