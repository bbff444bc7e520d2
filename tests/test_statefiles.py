"""Files in the state dir another user owns: named by check-config (preflight's `state dir files` step, the check
`run` makes too) and given back by `doctor --fix` without following a link (clawsvc/gateway/statefiles.py)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from localusers import reachable_dir, throwaway_user

from clawsvc import trust
from clawsvc.commands.doctor import gatewayside
from clawsvc.config import Config, GatewayConfig
from clawsvc.gateway import statefiles

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="files of several owners need root")


def test_what_another_user_owns_is_found_without_following_links(tmp_path: Path) -> None:
    with throwaway_user() as user:
        state = tmp_path / "state"
        (state / "agents" / "main").mkdir(parents=True)
        mine = state / "agents" / "main" / "db.sqlite"
        mine.write_text("x")
        theirs = state / "openclaw.json"
        theirs.write_text("{}")
        os.chown(theirs, user.pw_uid, user.pw_gid)
        outside = tmp_path / "outside"
        (outside / "deep").mkdir(parents=True)
        os.chown(outside / "deep", user.pw_uid, user.pw_gid)
        (state / "link").symlink_to(outside)  # root's link to a dir holding the user's: not walked into
        scan = statefiles.foreign(state, 0)
        assert scan.foreign == [(theirs, user.pw_uid)] and scan.complete
        line = statefiles.summary(scan, "root")
        assert line == f"1 file(s) in the state dir are not owned by root: {theirs} (uid {user.pw_uid})"
        assert statefiles.summary(statefiles.foreign(state, user.pw_uid), user.pw_name).startswith("5 file(s)")
        assert not statefiles.foreign(tmp_path / "missing", 0).foreign


def test_a_huge_state_dir_is_walked_only_so_far(tmp_path: Path) -> None:
    for index in range(30):
        (tmp_path / f"f{index}").touch()
    scan = statefiles.foreign(tmp_path, 0, limit=10)
    assert not scan.complete and scan.walked == 11


def test_doctor_fix_gives_back_what_root_left_and_nothing_a_link_points_at() -> None:
    with throwaway_user() as user, reachable_dir() as top:
        state = top / "state"
        (state / "sub").mkdir(parents=True)
        uid, gid = user.pw_uid, user.pw_gid
        for path in (state, state / "sub"):
            os.chown(path, uid, gid)
        rooted = state / "openclaw.json"  # what `openclaw config set` as root leaves: root's, 0600
        rooted.write_text("{}")
        rooted.chmod(0o600)
        (state / "sub" / "root-dir").mkdir()
        (state / "sub" / "root-dir" / "inner").write_text("x")
        precious = top / "precious"  # root's file outside the state dir, reached by a link and a hard link
        precious.write_text("root's")
        (state / "to-precious").symlink_to(precious)
        os.link(precious, state / "hard-precious")
        os.mkfifo(state / "fifo")
        fixed = statefiles.give_back(state, uid, gid)
        inner = state / "sub" / "root-dir"
        assert sorted(fixed.changed) == sorted([rooted, inner, inner / "inner", state / "to-precious"])
        assert dict(fixed.left) == {state / "hard-precious": "it has 2 links",
                                    state / "fifo": "it is not a regular file or a directory"}
        assert (rooted.stat().st_uid, rooted.stat().st_gid) == (uid, gid)
        assert os.lstat(state / "to-precious").st_uid == uid
        assert precious.stat().st_uid == 0, "a link's target is never given away"
        assert sorted(statefiles.foreign(state, uid).foreign) == [(state / "fifo", 0), (state / "hard-precious", 0)]


@contextlib.contextmanager
def relinked_state_dir() -> Iterator[tuple[pwd.struct_passwd, Path, Path]]:
    """(the service user, its state_dir /top/svc/a/openclaw, root's /top/lib/openclaw): below a directory of its
    own the service user has swapped `a` for a link to a place holding a root-owned `openclaw` (the gateway's own
    code, say)."""
    with throwaway_user() as user, reachable_dir() as top:
        state = top / "svc" / "a" / "openclaw"
        state.mkdir(parents=True)
        for path in (top / "svc", top / "svc" / "a", state):
            os.chown(path, user.pw_uid, user.pw_gid)
        code = top / "lib" / "openclaw"
        code.mkdir(parents=True)
        (code / "openclaw.mjs").write_text("// root's code\n")
        os.rename(top / "svc" / "a", top / "svc" / "was-a")
        (top / "svc" / "a").symlink_to(top / "lib")
        os.lchown(top / "svc" / "a", user.pw_uid, user.pw_gid)
        yield user, state, code


def test_give_back_never_follows_a_link_on_the_way_to_the_state_dir() -> None:
    with relinked_state_dir() as (user, state, code):
        with pytest.raises(OSError) as refused:
            statefiles.give_back(state, user.pw_uid, user.pw_gid)
        assert refused.value.errno in (errno.ELOOP, errno.ENOTDIR)
        assert (code.stat().st_uid, (code / "openclaw.mjs").stat().st_uid) == (0, 0)


def test_doctor_fix_refuses_a_state_dir_reached_through_the_service_users_link(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with relinked_state_dir() as (user, state, code):
        monkeypatch.setattr(trust, "service_uid", lambda: user.pw_uid)
        out = io.StringIO()
        gatewayside._give_back(Config(gateway=GatewayConfig(state_dir=state)), out)
        link = state.parent
        assert out.getvalue() == (f"FAIL   state dir: gateway.state_dir {state}: symlink {link} on its path belongs "
                                  f"to user {user.pw_name} (uid {user.pw_uid}), who could point it anywhere; root "
                                  "changes nothing through it: use the real path\n")
        assert (code.stat().st_uid, (code / "openclaw.mjs").stat().st_uid) == (0, 0)


def test_check_config_refuses_a_state_dir_with_files_the_gateway_cannot_write(tmp_path: Path) -> None:
    """What `run` refuses too (the same preflight step): exit 78, one line naming the file and the fix."""
    with throwaway_user() as user:
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        theirs = state / "openclaw.json"
        theirs.write_text("{}")
        os.chown(theirs, user.pw_uid, user.pw_gid)
        config = tmp_path / "clawsvc.yaml"
        config.write_text(f"gateway:\n  command: [{sys.executable}]\n  state_dir: {state}\n  compile_cache: false\n"
                          f"control:\n  socket: {tmp_path / 'ctl.sock'}\n")
        done = subprocess.run([sys.executable, "-m", "clawsvc", "check-config", "-c", str(config)],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "CLAWSVC_CONFIG": ""})
    assert done.returncode == 78, done.stderr
    assert done.stderr.strip() == (f"clawsvc: gateway.state_dir {state}: 1 file(s) in the state dir are not owned by "
                                   f"root: {theirs} (uid {user.pw_uid}); the gateway cannot write them: run "
                                   "`sudo clawsvc doctor --fix`")
