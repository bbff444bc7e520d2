"""StrictModes for clawsvc (clawsvc.trust): what another local user could plant is refused, never followed,
chmod'ed or written through; secrets are read from small regular files only, without blocking.

"Another user" is uid 65534 (nobody): the tests run as root and chown what that user would have made.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from double import python
from localusers import add_to_group, shared_group, throwaway_user

from clawsvc import exitcodes, secrets, trust
from clawsvc.commands import check_config as checkconfig
from clawsvc.config import AuthConfig, Config, ConfigError, GatewayConfig, load_config
from clawsvc.config.trusted import check_config_paths
from clawsvc.gateway.process import SpawnError, prepare_state_dir
from clawsvc.secrets import SecretError, keyring_client
from clawsvc.service.preflight import preflight

OTHER = 65534
NOBODY = re.escape(f"user nobody (uid {OTHER})")  # as messages name uid 65534
TOKEN = "token-value-from-a-file-0001"
MEMORY_LIMIT = 500 * 1024 * 1024

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files to another user")


@pytest.fixture(autouse=True)
def no_keyring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setattr(keyring_client._KeyringState, "broken", None)


def config(state_dir: Path, token_file: Path | None = None, source: Path | None = None) -> Config:
    return Config(gateway=GatewayConfig(state_dir=state_dir), auth=AuthConfig(token_file=token_file),
                  providers=(), source=source)


def secret_file(path: Path, text: str = TOKEN, mode: int = 0o600, uid: int | None = None) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def sticky_dir_with_foreign_link(tmp_path: Path, target: Path) -> Path:
    """tmp_path/shared (1777, like /tmp) holding a symlink to `target` made by another user."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    link = shared / "state"
    link.symlink_to(target)
    os.lchown(link, OTHER, OTHER)
    return link


def snapshot(directory: Path) -> tuple[int, dict[str, bytes]]:
    return stat.S_IMODE(directory.stat().st_mode), {p.name: p.read_bytes() for p in directory.iterdir()}


LOAD_TOKEN = """
import sys
from pathlib import Path
from clawsvc import secrets
from clawsvc.config import AuthConfig, Config, GatewayConfig
config = Config(gateway=GatewayConfig(state_dir=Path(sys.argv[1])), auth=AuthConfig(token_file=Path(sys.argv[2])),
                providers=())
try:
    secrets.load_gateway_token(config)
except secrets.SecretError as exc:
    print(exc)
    sys.exit(78)
"""


def load_token_in_child(cfg: Config, limit_memory: bool = False) -> subprocess.CompletedProcess[str]:
    """secrets.load_gateway_token in a child process: a reader that blocks or fills memory cannot take the
    test run with it."""
    prefix = ["prlimit", f"--as={MEMORY_LIMIT}"] if limit_memory else []
    argv = [*prefix, sys.executable, "-c", LOAD_TOKEN, str(cfg.gateway.state_dir), str(cfg.auth.token_file)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- the state dir

def test_a_state_dir_of_another_user_with_a_planted_token_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    secret_file(state / "gateway-token", "planted-token-value-00000001", uid=OTHER)
    os.chown(state, OTHER, OTHER)
    with pytest.raises(SecretError, match=rf"gateway.state_dir {state} is owned by {NOBODY}.*"
                                          rf"chown root: {state} && chmod 700 {state}") as caught:
        secrets.load_gateway_token(config(state))
    assert "planted-token-value" not in str(caught.value)
    with pytest.raises(SpawnError, match=f"owned by {NOBODY}"):
        prepare_state_dir(config(state))
    with pytest.raises(trust.TrustError, match=f"owned by {NOBODY}"):
        check_config_paths(config(state))


def test_our_own_state_dir_writable_by_others_is_refused_not_silently_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(SpawnError, match=rf"{state} is writable by group/others \(mode 0777\)"):
        prepare_state_dir(config(state))
    with pytest.raises(SecretError, match="writable by group/others"):
        secrets.load_gateway_token(config(state))
    assert stat.S_IMODE(state.stat().st_mode) == 0o777
    assert list(state.iterdir()) == []


def test_our_own_state_dir_readable_by_others_is_tightened_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    prepare_state_dir(config(state))
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert any(r.levelno == logging.WARNING and "mode 0755" in r.getMessage() for r in caplog.records)


def test_a_new_state_dir_is_made_0700_below_new_parents_that_others_cannot_write(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b" / "state"
    old = os.umask(0)
    try:
        prepare_state_dir(config(state))
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.parent.stat().st_mode) == 0o755
    check_config_paths(config(state))


def test_a_foreign_symlink_in_a_sticky_dir_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o755)
    (target / "keep").write_text("untouched")
    before = snapshot(target)
    link = sticky_dir_with_foreign_link(tmp_path, target)
    with pytest.raises(SpawnError, match=rf"symlink {link} on its path is owned by {NOBODY}"):
        prepare_state_dir(config(link))
    with pytest.raises(SecretError, match=rf"symlink {link} on its path is owned by {NOBODY}"):
        secrets.load_gateway_token(config(link))
    with pytest.raises(trust.TrustError, match="symlink"):
        check_config_paths(config(link))
    assert snapshot(target) == before


def test_our_own_symlink_in_a_sticky_dir_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = sticky_dir_with_foreign_link(tmp_path, target)
    os.lchown(link, os.geteuid(), os.getegid())
    token, source = secrets.load_gateway_token(config(link))
    assert source == f"generated {link}/gateway-token"
    assert (target / "gateway-token").read_text().strip() == token


def test_a_missing_state_dir_below_a_foreign_directory_is_refused_and_not_created(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, OTHER, OTHER)
    state = foreign / "sub" / "state"
    with pytest.raises(trust.TrustError, match=rf"directory {foreign} on its path is owned by {NOBODY}"):
        check_config_paths(config(state))
    with pytest.raises(SpawnError, match=f"directory {foreign} on its path"):
        prepare_state_dir(config(state))
    assert list(foreign.iterdir()) == []


def test_a_group_writable_ancestor_needs_the_sticky_bit(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared_group(shared)  # root:root would be root's private group
    shared.chmod(0o775)
    with pytest.raises(SpawnError, match=rf"directory {shared} on its path is writable by group/others "
                                         rf"\(mode 0775\); run: chmod go-w {shared}"):
        prepare_state_dir(config(shared / "state"))
    assert list(shared.iterdir()) == []
    shared.chmod(0o1777)
    prepare_state_dir(config(shared / "state"))
    assert stat.S_IMODE((shared / "state").stat().st_mode) == 0o700


# ---------------------------------------------------------------- secret files

def test_a_token_file_of_another_user_or_writable_by_others_is_refused(tmp_path: Path) -> None:
    foreign = secret_file(tmp_path / "foreign", uid=OTHER)
    with pytest.raises(SecretError, match=rf"auth.token_file {foreign} is owned by {NOBODY}, .*"
                                          rf"run: chown root: {foreign} && chmod 600 {foreign}"):
        secrets.load_gateway_token(config(tmp_path / "state", foreign))
    writable = secret_file(tmp_path / "writable", mode=0o602)
    with pytest.raises(SecretError, match=rf"{writable} is writable by group/others \(mode 0602\)"):
        secrets.load_gateway_token(config(tmp_path / "state", writable))
    assert writable.read_text() == TOKEN + "\n" and stat.S_IMODE(writable.stat().st_mode) == 0o602


def test_a_credential_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret_file(credentials / "gateway-token", uid=OTHER)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    with pytest.raises(SecretError, match=f"credential gateway-token {credentials}/gateway-token is owned by {NOBODY}"):
        secrets.load_gateway_token(config(tmp_path / "state"))


def test_a_fifo_token_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    done = load_token_in_child(config(tmp_path / "state", fifo))
    assert done.returncode == 78, done.stderr
    assert done.stdout.strip() == f"auth.token_file {fifo} is a FIFO, not a regular file; use a regular file there"


def test_a_token_file_linked_to_dev_zero_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    link = tmp_path / "token"
    link.symlink_to("/dev/zero")
    done = load_token_in_child(config(tmp_path / "state", link), limit_memory=True)
    assert done.returncode == 78, done.stderr
    assert "is a character device, not a regular file" in done.stdout and "Traceback" not in done.stderr


def test_an_oversized_token_file_is_refused_before_reading(tmp_path: Path) -> None:
    big = secret_file(tmp_path / "big", "x" * (trust.SECRET_CAP + 1))
    with pytest.raises(SecretError, match=rf"{big} is larger than 64 KiB \({trust.SECRET_CAP + 2} bytes\)"):
        secrets.load_gateway_token(config(tmp_path / "state", big))
    largest = secret_file(tmp_path / "largest", "y" * (trust.SECRET_CAP - 1))
    assert secrets.load_gateway_token(config(tmp_path / "state", largest))[0] == "y" * (trust.SECRET_CAP - 1)


def test_a_symlink_planted_as_the_generated_token_is_refused_and_its_target_never_written(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    (state / "gateway-token").symlink_to(victim)
    with pytest.raises(SecretError, match=rf"generated gateway token {state}/gateway-token is a symbolic link"):
        secrets.load_gateway_token(config(state))
    with pytest.raises(trust.TrustError, match="is a symbolic link"):
        check_config_paths(config(state))
    assert not victim.exists()
    assert sorted(p.name for p in state.iterdir()) == ["gateway-token"]  # no temp file left either


def test_the_generated_token_is_a_new_0600_regular_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        token = secrets.load_gateway_token(config(state))[0]
    finally:
        os.umask(old)
    st = os.lstat(state / "gateway-token")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1
    assert (state / "gateway-token").read_text() == token + "\n"


# ---------------------------------------------------------------- check_config_paths (run, check-config, reload)

def test_check_config_paths_accepts_our_own_files_and_changes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "clawsvc.yaml"
    source.write_text("")
    token = secret_file(tmp_path / "token", mode=0o640)
    check_config_paths(config(tmp_path / "state", token, source))
    assert not (tmp_path / "state").exists()


def test_check_config_paths_refuses_a_config_file_of_another_user(tmp_path: Path) -> None:
    source = tmp_path / "clawsvc.yaml"
    source.write_text("")
    os.chown(source, OTHER, OTHER)
    with pytest.raises(trust.TrustError, match=rf"config file {source} is owned by {NOBODY}"):
        check_config_paths(config(tmp_path / "state", source=source))


def test_check_config_paths_refuses_what_reading_the_token_would(tmp_path: Path) -> None:
    with pytest.raises(trust.TrustError, match=rf"auth.token_file {tmp_path}/absent does not exist"):
        check_config_paths(config(tmp_path / "state", tmp_path / "absent"))
    big = secret_file(tmp_path / "big", "x" * trust.SECRET_CAP)
    with pytest.raises(trust.TrustError, match=rf"{big} is larger than 64 KiB"):
        check_config_paths(config(tmp_path / "state", big))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(trust.TrustError, match="is a FIFO, not a regular file"):
        check_config_paths(config(tmp_path / "state", fifo))


# ---------------------------------------------------------------- `..` on the way

def test_dotdot_back_into_a_shared_dir_is_judged_as_that_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "x" / "sub").mkdir(parents=True)
    state = shared / "x" / "sub" / ".." / ".."
    with pytest.raises(trust.TrustError, match=rf"gateway.state_dir {shared} is writable by group/others "
                                               r"\(mode 1777\)"):
        trust.check_dir(state, "gateway.state_dir")
    with pytest.raises(trust.TrustError, match=rf"gateway.state_dir {shared} is writable by group/others"):
        check_config_paths(config(state))
    with pytest.raises(SpawnError, match=rf"gateway.state_dir {shared} is writable by group/others"):
        prepare_state_dir(config(state))
    assert sorted(p.name for p in shared.iterdir()) == ["x"]


def test_dotdot_that_stays_in_trusted_dirs_still_works(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    state = tmp_path / "a" / "b" / ".." / "state"
    token, source = secrets.load_gateway_token(config(state))
    assert source == f"generated {state}/gateway-token"
    assert (tmp_path / "a" / "state" / "gateway-token").read_text() == token + "\n"
    assert trust.check_dir(state, "gateway.state_dir") == tmp_path / "a" / "state"
    check_config_paths(config(state))


def test_dotdot_after_a_symlink_climbs_from_its_target_like_the_kernel(tmp_path: Path) -> None:
    (tmp_path / "real" / "deep").mkdir(parents=True)
    (tmp_path / "real" / "state").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "deep")
    assert trust.check_dir(tmp_path / "link" / ".." / "state", "gateway.state_dir") == tmp_path / "real" / "state"


def test_a_relative_link_starting_with_dotdot_resolves_from_its_own_directory(tmp_path: Path) -> None:
    """gateway-install's layout: PREFIX/current -> openclaw-V, openclaw-V/node -> ../node-X/bin/node."""
    node = tmp_path / "node-24" / "bin" / "node"
    node.parent.mkdir(parents=True)
    node.write_text("#!/bin/sh\n")
    (tmp_path / "openclaw-1").mkdir()
    (tmp_path / "openclaw-1" / "node").symlink_to("../node-24/bin/node")
    (tmp_path / "current").symlink_to("openclaw-1")
    assert trust.resolve(tmp_path / "current" / "node", "gateway.command")[0] == node
    assert trust.check_file(tmp_path / "current" / "node", "gateway.command") is not None


def test_dotdot_after_a_regular_file_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "state").mkdir(mode=0o700)
    with pytest.raises(trust.TrustError, match=rf"cannot check {tmp_path}/file: Not a directory"):
        check_config_paths(config(tmp_path / "file" / ".." / "state"))


# ---------------------------------------------------------------- root and the service user

def service_owned_state_dir(tmp_path: Path, uid: int = OTHER) -> Path:
    """A state dir with a generated token, both as the service user `uid` would have made them."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    secret_file(state / "gateway-token", "service-token-value-000000001", uid=uid)
    os.chown(state, uid, uid)
    return state


def config_file(tmp_path: Path, state: Path) -> Path:
    path = tmp_path / "clawsvc.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"state_dir": str(state), "command": [python(), "-c", "pass"]},
                                    "auth": {"token_file": None}}))
    return path


def check_config(path: Path) -> int:
    return checkconfig.main(argparse.Namespace(config=path, print=False))


@pytest.fixture
def service_user_is_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a system install, where the units run as the service user (here uid 65534 plays it)."""
    monkeypatch.setattr(trust, "service_uid", lambda: OTHER)


@pytest.mark.usefixtures("service_user_is_nobody")
def test_root_run_refuses_a_state_dir_of_the_service_user(tmp_path: Path) -> None:
    state = service_owned_state_dir(tmp_path)
    cfg = load_config(config_file(tmp_path, state))
    with pytest.raises(ConfigError, match=rf"gateway.state_dir {state} is owned by {NOBODY}, not by root; "
                                          rf"run: chown root: {state}"):
        preflight(cfg)  # what `run` and a reload check first
    with pytest.raises(SpawnError, match=f"owned by {NOBODY}"):
        prepare_state_dir(cfg)
    with pytest.raises(SecretError, match=f"owned by {NOBODY}"):
        secrets.load_gateway_token(cfg)


@pytest.mark.usefixtures("service_user_is_nobody")
def test_root_check_config_accepts_a_state_dir_of_the_service_user(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = config_file(tmp_path, service_owned_state_dir(tmp_path))
    assert check_config(path) == 0
    assert capsys.readouterr() == (f"{path}: ok\n", "")
    assert trust.trusted_uids() == {0}  # judged as the service only while check-config ran


@pytest.mark.usefixtures("service_user_is_nobody")
def test_root_check_config_refuses_a_state_dir_of_any_other_user(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    state = service_owned_state_dir(tmp_path, uid=OTHER - 1)
    assert check_config(config_file(tmp_path, state)) == exitcodes.CONFIG
    assert capsys.readouterr().err == (f"clawsvc: gateway.state_dir {state} is owned by uid {OTHER - 1}, not by root "
                                       f"or nobody; run: chown nobody: {state} && chmod 700 {state}\n")


def test_check_config_without_a_service_user_judges_as_root_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(trust, "service_uid", lambda: None)
    state = service_owned_state_dir(tmp_path)
    assert check_config(config_file(tmp_path, state)) == exitcodes.CONFIG
    assert f"gateway.state_dir {state} is owned by user nobody (uid {OTHER}), not by root;" in capsys.readouterr().err


# ---------------------------------------------------------------- user-private groups (useradd -U, umask 002)

def group_writable_home(tmp_path: Path, user: pwd.struct_passwd, gid: int | None = None) -> Path:
    """tmp_path/home made by `user` with umask 002 (0775), holding a private state dir."""
    home = tmp_path / "home"
    home.mkdir(mode=0o775)
    home.chmod(0o775)
    (home / "state").mkdir(mode=0o700)
    for path in (home, home / "state"):
        os.chown(path, user.pw_uid, user.pw_gid if gid is None else gid)
    return home


@pytest.fixture
def upg_user(monkeypatch: pytest.MonkeyPatch) -> Iterator[pwd.struct_passwd]:
    """A real user with its own private group (useradd -U), trusted here as the service user."""
    with throwaway_user() as user:
        monkeypatch.setattr(trust, "service_uid", lambda: user.pw_uid)
        yield user


def test_a_group_writable_dir_of_its_owners_private_group_is_trusted(tmp_path: Path,
                                                                     upg_user: pwd.struct_passwd) -> None:
    home = group_writable_home(tmp_path, upg_user)
    with trust.judged_as_the_service():
        assert trust.check_dir(home / "state", "gateway.state_dir") == home / "state"  # passing through it
        assert trust.check_dir(home, "gateway.state_dir") == home  # and as the directory itself
    assert trust.private_group(upg_user.pw_uid, upg_user.pw_gid)


def test_a_private_group_with_another_member_makes_group_writable_mean_writable_by_others(
        tmp_path: Path, upg_user: pwd.struct_passwd) -> None:
    home = group_writable_home(tmp_path, upg_user)
    refused = rf"directory {home} on its path is writable by group/others \(mode 0775\); run: chmod go-w {home}"
    with throwaway_user() as member:
        add_to_group(member.pw_name, upg_user.pw_name)
        with trust.judged_as_the_service(), pytest.raises(trust.TrustError, match=refused):
            trust.check_dir(home / "state", "gateway.state_dir")
    with throwaway_user(primary_group=upg_user.pw_name), trust.judged_as_the_service(), \
            pytest.raises(trust.TrustError, match=refused):
        trust.check_dir(home / "state", "gateway.state_dir")  # another user with it as primary group
    with trust.judged_as_the_service():
        assert trust.check_dir(home / "state", "gateway.state_dir") == home / "state"  # both gone again


def test_a_group_not_named_after_its_owner_is_no_private_group(tmp_path: Path, upg_user: pwd.struct_passwd) -> None:
    home = group_writable_home(tmp_path, upg_user, gid=OTHER)  # nogroup: nobody's primary group
    with trust.judged_as_the_service(), pytest.raises(trust.TrustError, match=rf"directory {home} on its path is "
                                                                             r"writable by group/others"):
        trust.check_dir(home / "state", "gateway.state_dir")
    token = secret_file(home / "state" / "token", mode=0o660)
    for path in (home, token):
        os.chown(path, upg_user.pw_uid, upg_user.pw_gid)
    with trust.judged_as_the_service():
        assert trust.read_secret(token, "auth.token_file").text.strip() == TOKEN  # 0660 in its private group
    os.chown(token, upg_user.pw_uid, OTHER)
    with trust.judged_as_the_service(), pytest.raises(trust.TrustError, match=rf"auth.token_file {token} is writable "
                                                                             r"by group/others \(mode 0660\)"):
        trust.read_secret(token, "auth.token_file")


# ---------------------------------------------------------------- root reaching through the service user's paths

def service_user_dir(tmp_path: Path) -> Path:
    """A directory the service user (nobody here) owns, as /var/lib/clawsvc is on a system install."""
    path = tmp_path / "svc"
    path.mkdir(mode=0o700)
    os.chown(path, OTHER, OTHER)
    return path


def planted_link(directory: Path, name: str, target: Path) -> Path:
    link = directory / name
    link.symlink_to(target)
    os.lchown(link, OTHER, OTHER)
    return link


@pytest.mark.usefixtures("service_user_is_nobody")
def test_root_never_reads_a_root_file_the_service_users_symlink_points_at(tmp_path: Path) -> None:
    # `sudo clawsvc openclaw` reads auth.token_file as root and hands it to the CLI as the service user: through
    # the service user's symlink, that would be any root-only file.
    shadow = secret_file(tmp_path / "shadow", "ROOT-ONLY-SECRET")
    token_file = planted_link(service_user_dir(tmp_path), "token", shadow)
    with trust.judged_as_the_service(), pytest.raises(trust.TrustError) as refused:
        trust.read_secret(token_file, "auth.token_file")
    assert str(refused.value) == (
        f"auth.token_file {token_file} belongs to user root (uid 0) but is reached through a directory or symlink "
        f"of user nobody (uid {OTHER}), who could point it anywhere; root does not open it: give it to that "
        "user, or use a path whose directories belong to root")


@pytest.mark.usefixtures("service_user_is_nobody")
def test_root_reads_the_service_users_own_file_in_its_own_directory(tmp_path: Path) -> None:
    token_file = secret_file(service_user_dir(tmp_path) / "token", uid=OTHER)
    with trust.judged_as_the_service():
        assert trust.read_secret(token_file, "auth.token_file").text == TOKEN + "\n"


@pytest.mark.usefixtures("service_user_is_nobody")
def test_root_never_reads_a_generated_token_through_a_state_dir_the_service_user_relinked(tmp_path: Path) -> None:
    elsewhere = tmp_path / "roots"  # root's own clawsvc state dir, say
    elsewhere.mkdir(mode=0o700)
    secret_file(elsewhere / trust.GENERATED_TOKEN_NAME, "ROOTS-OWN-TOKEN")
    state = planted_link(service_user_dir(tmp_path), "openclaw", elsewhere)
    with trust.judged_as_the_service(), pytest.raises(SecretError, match="reached through a directory or symlink"):
        secrets.tokens._existing_generated_token(state)


@pytest.mark.usefixtures("service_user_is_nobody")
def test_root_never_tightens_a_root_directory_the_service_users_symlink_points_at(tmp_path: Path) -> None:
    shared = tmp_path / "etc"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    state = planted_link(service_user_dir(tmp_path), "openclaw", shared)
    with trust.judged_as_the_service(), pytest.raises(trust.TrustError, match="reached through"):
        trust.open_private_dir(state, "gateway.state_dir")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
