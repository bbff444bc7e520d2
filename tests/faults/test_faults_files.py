"""Faults from the file system: a state dir, token file or config file another user planted or can change, a
symlink in a shared directory, a token file that is a FIFO, /dev/zero or 50 MB. `clawsvc run` refuses each
with exit 78 and one line, in seconds and bounded memory, spawns nothing and changes nothing.

"Another user" is uid 65534 (nobody): these tests run as root and chown what that user would have made.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from faultkit import Services, error_lines, spawned, write_config
from localusers import add_to_group, throwaway_user
from service_proc import ServiceProcess
from test_trust import sticky_dir_with_foreign_link

from clawsvc import exitcodes

OTHER = 65534
NOBODY = f"user nobody (uid {OTHER})"  # as messages name uid 65534
REFUSED_WITHIN = 30.0  # a refusal takes well under a second; reaching this means clawsvc hangs
MEMORY_LIMIT = 500 * 1024 * 1024
GENERATED = {"auth": {"token_file": None}}
NO_KEYRING = {"PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files to another user")


def refused(svc: ServiceProcess, path: Path) -> str:
    """clawsvc exited 78 with exactly one ERROR line, naming `path`; no gateway was started. Returns the line."""
    assert svc.wait(REFUSED_WITHIN) == exitcodes.CONFIG, svc.log()[-3000:]
    log = svc.log()
    assert len([line for line in log.splitlines() if "ERROR" in line]) == 1, log[-3000:]
    lines = error_lines(svc, str(path))
    assert len(lines) == 1, log[-3000:]
    assert "Traceback" not in log
    assert spawned(svc) == [] and not (svc.root / "requests.jsonl").exists()
    assert svc.leftovers() == []
    return lines[0]


def clawsvc(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`clawsvc ARGS` as a real process in its own group; killed (group and all) if still there at the deadline."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CLAWSVC_CONFIG")}
    popen = subprocess.Popen([*prefix, sys.executable, "-m", "clawsvc", *args], env=env, text=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        out, err = popen.communicate(timeout=REFUSED_WITHIN)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.communicate()
        raise AssertionError(f"clawsvc {' '.join(args)} still running after {REFUSED_WITHIN}s") from None
    return subprocess.CompletedProcess(popen.args, popen.returncode, out, err)


def run_refused_in_bounded_memory(root: Path, token_file: Path) -> str:
    """`clawsvc run` under a 500 MB address-space limit: exit 78, one line, no traceback. Returns stderr."""
    config = write_config(root, {"auth": {"token_file": str(token_file)}})
    done = clawsvc("run", "-c", str(config), prefix=("prlimit", f"--as={MEMORY_LIMIT}"))
    assert done.returncode == exitcodes.CONFIG, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(token_file) in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "started gateway" not in done.stderr
    return done.stderr


def snapshot(directory: Path) -> tuple[int, dict[str, bytes]]:
    return stat.S_IMODE(directory.stat().st_mode), {p.name: p.read_bytes() for p in directory.iterdir()}


# ---------------------------------------------------------------- the state dir

def test_a_state_dir_of_another_user_with_a_planted_token_is_refused(services: Services, tmp_path: Path) -> None:
    state = tmp_path / "planted"
    state.mkdir(mode=0o700)
    planted = state / "gateway-token"
    planted.write_text("planted-token-value-000000001\n")
    planted.chmod(0o600)
    for path in (planted, state):
        os.chown(path, OTHER, OTHER)
    svc = services.start(extra={**GENERATED, "gateway": {"state_dir": str(state)}}, env=NO_KEYRING, events=True)
    line = refused(svc, state)
    assert f"owned by {NOBODY}" in line and f"chown root: {state} && chmod 700 {state}" in line
    assert "planted-token-value" not in svc.log()


def test_a_state_dir_writable_by_others_is_refused(services: Services, tmp_path: Path) -> None:
    state = tmp_path / "open"
    state.mkdir()
    state.chmod(0o777)
    svc = services.start(extra={"gateway": {"state_dir": str(state)}}, events=True)
    assert "writable by group/others (mode 0777)" in refused(svc, state)
    assert snapshot(state) == (0o777, {})


def test_a_state_dir_through_a_foreign_symlink_in_a_sticky_dir_is_refused_untouched(services: Services,
                                                                                    tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.mkdir(mode=0o755)
    (target / "data").write_text("the victim's data\n")
    before = snapshot(target)
    link = sticky_dir_with_foreign_link(tmp_path, target)
    svc = services.start(extra={**GENERATED, "gateway": {"state_dir": str(link)}}, env=NO_KEYRING, events=True)
    assert f"symlink {link} on its path is owned by {NOBODY}" in refused(svc, link)
    assert snapshot(target) == before


def test_a_symlink_planted_as_the_generated_token_is_refused_and_never_written_through(services: Services,
                                                                                       tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim-file"
    (state / "gateway-token").symlink_to(victim)
    svc = services.start(extra={**GENERATED, "gateway": {"state_dir": str(state)}}, env=NO_KEYRING, events=True)
    assert "is a symbolic link" in refused(svc, state / "gateway-token")
    assert not victim.exists()
    assert [p.name for p in state.iterdir()] == ["gateway-token"]


# ---------------------------------------------------------------- the token file

def test_a_token_file_of_another_user_is_refused(services: Services, tmp_path: Path) -> None:
    token = tmp_path / "foreign-token"
    token.write_text("foreign-token-value-000000001\n")
    token.chmod(0o600)
    os.chown(token, OTHER, OTHER)
    svc = services.start(extra={"auth": {"token_file": str(token)}}, events=True)
    assert f"owned by {NOBODY}" in refused(svc, token)
    assert "foreign-token-value" not in svc.log()


def test_a_token_file_writable_by_others_is_refused_untouched(services: Services, tmp_path: Path) -> None:
    token = tmp_path / "open-token"
    token.write_text("open-token-value-0000000001\n")
    token.chmod(0o666)
    svc = services.start(extra={"auth": {"token_file": str(token)}}, events=True)
    assert "writable by group/others (mode 0666)" in refused(svc, token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o666 and token.read_text() == "open-token-value-0000000001\n"


def test_a_fifo_as_token_file_is_refused_without_hanging(services: Services, tmp_path: Path) -> None:
    fifo = tmp_path / "token-fifo"
    os.mkfifo(fifo, 0o600)
    svc = services.start(extra={"auth": {"token_file": str(fifo)}}, events=True)
    assert "is a FIFO, not a regular file" in refused(svc, fifo)


def test_a_token_file_linked_to_dev_zero_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    link = tmp_path / "zero-token"
    link.symlink_to("/dev/zero")
    assert "is a character device, not a regular file" in run_refused_in_bounded_memory(tmp_path, link)


def test_a_50_mb_token_file_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "big-token"
    with big.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: the size is what matters, not the disk it takes
    big.chmod(0o600)
    assert "is larger than 64 KiB" in run_refused_in_bounded_memory(tmp_path, big)


# ---------------------------------------------------------------- the config file

@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_config_file_of_another_user_is_refused(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path, {})
    os.chown(config, OTHER, OTHER)
    done = clawsvc(command, "-c", str(config))
    assert done.returncode == exitcodes.CONFIG, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"config file {config} is owned by {NOBODY}" in lines[0], done.stderr
    assert "started gateway" not in done.stderr


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_state_dir_that_climbs_back_into_a_shared_dir_is_refused(tmp_path: Path, command: str) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "x" / "sub").mkdir(parents=True)
    config = write_config(tmp_path, {**GENERATED, "gateway": {"state_dir": f"{shared}/x/sub/../.."}})
    done = clawsvc(command, "-c", str(config), prefix=("env", *(f"{k}={v}" for k, v in NO_KEYRING.items())))
    assert done.returncode == exitcodes.CONFIG, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"gateway.state_dir {shared} is writable by group/others (mode 1777)" in lines[0], \
        done.stderr
    assert sorted(p.name for p in shared.iterdir()) == ["x"] and "started gateway" not in done.stderr


# ---------------------------------------------------------------- a user-private group with umask 002

def test_a_user_with_a_private_group_and_umask_002_is_trusted_in_its_own_group_writable_dirs() -> None:
    """Ubuntu's default: useradd -U groups and umask 002, so ~/.cache is 0775. clawsvc run by that user accepts
    its own dirs (the group is its alone) and refuses them once another user is in the group."""
    root = Path(tempfile.mkdtemp(prefix="clawsvc-upg-"))
    try:
        root.chmod(0o711)
        with throwaway_user() as user:
            home = root / user.pw_name
            home.mkdir(mode=0o775)
            home.chmod(0o775)
            os.chown(home, user.pw_uid, user.pw_gid)
            config = home / ".config" / "clawsvc" / "clawsvc.yaml"
            as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
            env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
            made = subprocess.run([*as_user, "sh", "-c", f"umask 002 && mkdir -p {config.parent} {home / '.cache'} "
                                   f"{home / '.local' / 'state'} && printf 'gateway:\\n  command: [/bin/true]\\n"
                                   f"providers: []\\n' > {config}"], env=env, cwd=home, timeout=REFUSED_WITHIN)
            assert made.returncode == 0

            def check_config() -> subprocess.CompletedProcess[str]:
                return subprocess.run([*as_user, sys.executable, "-m", "clawsvc", "check-config"], env=env,
                                      capture_output=True, text=True, timeout=REFUSED_WITHIN, cwd=home,
                                      stdin=subprocess.DEVNULL)

            accepted = check_config()
            assert accepted.returncode == 0, accepted.stderr
            assert accepted.stdout == f"{config}: ok\n"
            assert stat.S_IMODE((home / ".cache").stat().st_mode) == 0o775
            with throwaway_user() as member:
                add_to_group(member.pw_name, user.pw_name)
                refused = check_config()
            assert refused.returncode == exitcodes.CONFIG
            assert "writable by group/others (mode 0775)" in refused.stderr and refused.stderr.count("\n") == 1
    finally:
        shutil.rmtree(root)
