"""boundedrun: a helper program ends within its time and its output, with nothing of it left behind, and as
another account it is that account alone (its uid and primary group, no supplementary groups)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from localusers import throwaway_user
from waiting import poll

from clawsvc.boundedrun import Account, Unfinished, run_bounded


def left_behind(marker: str) -> list[int]:
    """Processes still running with MARKER=marker in their environment."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"MARKER={marker}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_output_past_the_cap_stops_it_and_its_group() -> None:
    marker = secrets.token_hex(8)
    with pytest.raises(Unfinished, match="printed more than 1000 bytes; stopped it"):
        run_bounded(["sh", "-c", "yes & yes"], env={"PATH": os.defpath, "MARKER": marker}, timeout=60, cap=1000)
    poll(lambda: not left_behind(marker), 10, "its processes to be gone (SIGKILL is delivered asynchronously)")


def test_the_deadline_stops_it_and_what_it_started() -> None:
    marker = secrets.token_hex(8)
    with pytest.raises(Unfinished, match=r"did not finish within 0\.5s; stopped it"):
        run_bounded(["sh", "-c", "sleep 600 & sleep 600"], env={"PATH": os.defpath, "MARKER": marker},
                    timeout=0.5, cap=1000)
    poll(lambda: not left_behind(marker), 10, "its processes to be gone (SIGKILL is delivered asynchronously)")


def test_what_it_says_and_its_exit_status() -> None:
    done = run_bounded(["sh", "-c", "echo out; echo err >&2; exit 3"], env={"PATH": os.defpath}, timeout=60,
                       cap=1000)
    assert (done.returncode, sorted(done.output.split())) == (3, [b"err", b"out"])
    with pytest.raises(Unfinished, match="cannot run /nonexistent/program"):
        run_bounded(["/nonexistent/program"], env={}, timeout=60, cap=1000)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another account needs root")
def test_as_another_account_it_has_that_uid_its_group_and_no_other_group() -> None:
    with throwaway_user() as user:
        done = run_bounded(["sh", "-c", "id -u; id -g; id -G"], env={"PATH": os.defpath}, timeout=60, cap=1000,
                           account=Account.of(user.pw_uid))
    assert done.returncode == 0
    assert done.output.split() == [str(user.pw_uid).encode(), str(user.pw_gid).encode(), str(user.pw_gid).encode()]
