"""Encrypted systemd credentials from `clawsvc keys` (clawsvc.secrets.credstore) and doctor's checks of them,
below a tmp install root ($CLAWSVC_INSTALL_ROOT) with a fake `systemd-creds` that fails loudly on a secret in
argv. The real systemd-creds and delivery to the gateway are in tests/test_systemd_credentials.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from another_user import needs_another_user

from clawsvc.commands.doctor import main as doctor
from clawsvc.secrets import credstore

HELPERS = Path(__file__).parent / "helpers"
KEY = "sk-ant-api03-" + "Zq9" * 10
TOKEN = "tok-" + "Rw7" * 10
STORE = Path("etc/credstore.encrypted/clawsvc/clawsvc")
DROPIN = Path("etc/systemd/system/clawsvc.service.d/50-clawsvc-credentials.conf")
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
ROOT_STORE = "the encrypted credential store is root's: `clawsvc keys` refuses it to other users"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason=ROOT_STORE)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "clawsvc.yaml"
    config.write_text("providers: [anthropic, openai]\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    tool = fake_bin / "systemd-creds"
    tool.write_text(f'#!/bin/sh\nexec {sys.executable} {HELPERS / "fake_systemd_creds.py"} "$@"\n')
    tool.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS", "CREDENTIALS"))}
    return {**base, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring", "CLAWSVC_CONFIG": str(config),
            credstore.INSTALL_ROOT_ENV: str(tmp_path / "root"), "PATH": f"{fake_bin}:{base['PATH']}",
            "FAKE_CREDS_LOG": str(tmp_path / "creds.log"), "FAKE_CREDS_SECRET": KEY}


def keys(env: dict[str, str], *args: str, stdin: str = "", prefix: tuple[str, ...] = ()
         ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*prefix, sys.executable, "-m", "clawsvc", "keys", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60)
    assert KEY not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


def root_of(env: dict[str, str]) -> Path:
    return Path(env[credstore.INSTALL_ROOT_ENV])


def tool_calls(env: dict[str, str]) -> list[list[str]]:
    log = Path(env["FAKE_CREDS_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def rows(listing: str) -> dict[str, str]:
    return {line.split()[0]: line for line in listing.splitlines()[2:]}


@needs_root
def test_set_without_keyring_stores_an_encrypted_credential_and_its_dropin(env: dict[str, str]) -> None:
    done = keys(env, "set", "anthropic", stdin=KEY + "\n")
    assert done.returncode == 0, done.stderr
    root = root_of(env)
    stored = root / STORE / "anthropic-api-key"
    assert KEY.encode() not in stored.read_bytes()
    info = stored.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600)
    for directory in (root / STORE, root / STORE.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in (root / STORE).iterdir()) == ["anthropic-api-key"], "no temp file is left"
    lines = (root / DROPIN).read_text().splitlines()
    assert lines[0].startswith("# Written by `clawsvc keys`")
    assert [line for line in lines if not line.startswith("#")] == [
        "[Service]",
        "LoadCredentialEncrypted=anthropic-api-key:/etc/credstore.encrypted/clawsvc/clawsvc/anthropic-api-key"]
    [call] = tool_calls(env)
    assert call[:3] == ["encrypt", "--name=anthropic-api-key", "-"], "the value went on stdin"
    assert Path(call[3]).parent == stored.parent and Path(call[3]) != stored, "a temp name, then renamed"
    assert f"/{STORE}/anthropic-api-key" in done.stdout
    assert "systemctl restart clawsvc.service" in done.stdout and "ANTHROPIC_API_KEY" in done.stdout
    # the file decrypts to the key, under its name (as systemd will check)
    decrypted = subprocess.run(["systemd-creds", "decrypt", "--name=anthropic-api-key", str(stored), "-"],
                               env=env, capture_output=True, text=True, timeout=30)
    assert decrypted.returncode == 0 and decrypted.stdout == KEY


@needs_root
def test_list_shows_where_each_key_lives(env: dict[str, str]) -> None:
    assert keys(env, "set", "anthropic", stdin=KEY).returncode == 0
    assert keys(env, "set", "gateway-token", stdin=TOKEN).returncode == 0
    listing = keys(env, "list")
    assert listing.returncode == 0
    head = listing.stdout.splitlines()[:2]
    assert head[0].startswith("keyring: none (") and "credentials: /etc/credstore.encrypted/clawsvc/clawsvc" in head[1]
    found = rows(listing.stdout)
    store = root_of(env) / STORE
    assert found["anthropic"].endswith(f"credential {store / 'anthropic-api-key'}")
    assert "ANTHROPIC_API_KEY" in found["anthropic"]
    assert found["openai"].endswith("not stored")
    assert found["gateway-token"].endswith(f"credential {store / 'gateway-token'}")


@needs_root
def test_delete_removes_the_file_and_its_line_then_the_dropin(env: dict[str, str]) -> None:
    root = root_of(env)
    assert keys(env, "set", "anthropic", stdin=KEY).returncode == 0
    assert keys(env, "set", "gateway-token", stdin=TOKEN).returncode == 0
    assert "LoadCredentialEncrypted=gateway-token:" in (root / DROPIN).read_text()

    gone = keys(env, "delete", "anthropic")
    assert gone.returncode == 0, gone.stderr
    assert f"/{STORE}/anthropic-api-key" in gone.stdout and "systemctl restart clawsvc.service" in gone.stdout
    assert not (root / STORE / "anthropic-api-key").exists()
    loads = [line for line in (root / DROPIN).read_text().splitlines() if line.startswith("LoadCredential")]
    assert loads == ["LoadCredentialEncrypted=gateway-token:/etc/credstore.encrypted/clawsvc/clawsvc/gateway-token"]

    assert keys(env, "delete", "gateway-token").returncode == 0
    assert not (root / DROPIN).exists() and not (root / DROPIN).parent.exists()
    assert not (root / STORE).exists()
    again = keys(env, "delete", "gateway-token")
    assert again.returncode == 1 and "no key for gateway-token is stored" in again.stderr


@needs_root
def test_set_replaces_an_older_credential(env: dict[str, str]) -> None:
    assert keys(env, "set", "openai", stdin="sk-old-" + "a" * 20).returncode == 0
    assert keys(env, "set", "openai", stdin=KEY).returncode == 0
    stored = root_of(env) / STORE / "openai-api-key"
    out = subprocess.run(["systemd-creds", "decrypt", "--name=openai-api-key", str(stored), "-"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == KEY
    assert sorted(p.name for p in stored.parent.iterdir()) == ["openai-api-key"]


@needs_root
@pytest.mark.parametrize(("name", "value", "message"), [
    ("gateway-token", "abc", "is refused by clawsvc: use at least 16"),
    ("anthropic", "two words", "contains whitespace"),
    ("anthropic", "\n", "empty key"),
])
def test_bad_values_are_refused_and_nothing_is_written(env: dict[str, str], name: str, value: str,
                                                        message: str) -> None:
    done = keys(env, "set", name, stdin=value)
    assert done.returncode == 1 and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (root_of(env) / "etc").exists() and tool_calls(env) == []


@needs_root
def test_failed_encryption_leaves_no_file_and_no_dropin(env: dict[str, str]) -> None:
    done = keys({**env, "FAKE_CREDS_FAIL": "1"}, "set", "anthropic", stdin=KEY)
    assert done.returncode == 1
    assert "`systemd-creds encrypt --name=anthropic-api-key` failed (exit 1: " in done.stderr
    assert list((root_of(env) / STORE).iterdir()) == []
    assert not (root_of(env) / DROPIN).exists()


@needs_another_user
def test_credential_store_needs_root_and_systemd_creds(env: dict[str, str], tmp_path: Path) -> None:
    unprivileged = {**env, "CLAWSVC_CONFIG": "", "XDG_CONFIG_HOME": "/nonexistent", "HOME": "/"}
    for store in ("credential", "auto"):
        done = keys(unprivileged, "set", "anthropic", "--store", store, stdin=KEY, prefix=tuple(NOBODY))
        assert done.returncode == 1 and "run it with sudo" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    listing = keys(unprivileged, "list", prefix=tuple(NOBODY))
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("keyring: none (") and "credentials: not checked (" in listing.stdout

    no_tool = keys({**env, "PATH": str(tmp_path / "empty")}, "set", "anthropic", "--store", "credential", stdin=KEY)
    assert no_tool.returncode == 1 and "systemd-creds is not installed" in no_tool.stderr
    assert not (root_of(env) / "etc").exists()


@needs_root
def test_instances_have_their_own_credentials_and_uninstall_removes_only_theirs(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PATH", credstore.INSTALL_ROOT_ENV):
        monkeypatch.setenv(name, env[name])
    root = root_of(env)
    main = credstore.store("clawsvc.service", "anthropic-api-key", KEY)
    alpha = credstore.store("clawsvc@alpha.service", "gateway-token", TOKEN)
    assert alpha == Path("/etc/credstore.encrypted/clawsvc/clawsvc@alpha/gateway-token")
    alpha_dropin = root / "etc/systemd/system/clawsvc@alpha.service.d/50-clawsvc-credentials.conf"
    assert f"LoadCredentialEncrypted=gateway-token:{alpha}" in alpha_dropin.read_text()
    assert credstore.stored_credentials("clawsvc@alpha.service") == {"gateway-token": root / alpha.relative_to("/")}

    removed = credstore.remove_unit_credentials("clawsvc@alpha.service")
    assert set(removed) == {root / alpha.relative_to("/"), root / alpha.parent.relative_to("/"), alpha_dropin}
    assert not alpha_dropin.parent.exists() and not (root / alpha.parent.relative_to("/")).exists()
    assert credstore.stored_credentials("clawsvc.service") == {"anthropic-api-key": root / main.relative_to("/")}
    assert (root / DROPIN).exists()
    assert credstore.remove_unit_credentials("clawsvc@alpha.service") == []
    with pytest.raises(credstore.CredstoreError, match="is not a clawsvc unit"):
        credstore.stored_credentials("../../etc.service")


# ---------------------------------------------------------------- doctor

@pytest.fixture
def stored(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """The anthropic key and the gateway token stored for clawsvc.service; the store's directory on disk."""
    if os.geteuid() != 0:
        pytest.skip(ROOT_STORE)
    for name in ("PATH", credstore.INSTALL_ROOT_ENV):
        monkeypatch.setenv(name, env[name])
    credstore.store("clawsvc.service", "anthropic-api-key", KEY)
    credstore.store("clawsvc.service", "gateway-token", TOKEN)
    return root_of(env) / STORE


def levels(findings: list[doctor.Finding]) -> list[tuple[str, str]]:
    return [(f.level.value, f.text) for f in findings]


def test_doctor_passes_stored_credentials_that_decrypt(stored: Path) -> None:
    found = doctor.check_credentials("clawsvc.service")
    assert [f.level for f in found] == [doctor.Level.OK], levels(found)
    assert "anthropic-api-key, gateway-token" in found[0].text and "each decrypts" in found[0].text


def test_doctor_with_nothing_stored_says_so(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(credstore.INSTALL_ROOT_ENV, env[credstore.INSTALL_ROOT_ENV])
    found = doctor.check_credentials("clawsvc@beta.service")
    assert levels(found) == [("ok", "none stored for clawsvc@beta.service in "
                                    "/etc/credstore.encrypted/clawsvc/clawsvc@beta")]


def test_doctor_fails_a_file_without_its_line_and_a_line_without_its_file(stored: Path, env: dict[str, str]) -> None:
    (stored / "gateway-token").unlink()
    (stored / "openai-api-key").write_bytes((stored / "anthropic-api-key").read_bytes())
    (stored / "openai-api-key").chmod(0o600)
    found = levels(doctor.check_credentials("clawsvc.service"))
    fails = [text for level, text in found if level == "FAIL"]
    assert len(fails) == 3, found
    assert any("loads gateway-token from" in t and "clawsvc keys delete gateway-token" in t for t in fails)
    assert any(t.startswith(f"{stored / 'openai-api-key'} is not loaded by ") for t in fails)
    assert any("does not decrypt as credential openai-api-key" in t for t in fails), "its embedded name differs"


def test_doctor_fails_a_credential_others_can_read(stored: Path) -> None:
    path = stored / "anthropic-api-key"
    path.chmod(0o644)
    found = levels(doctor.check_credentials("clawsvc.service"))
    assert found == [("FAIL", f"{path} is owned by uid 0 with mode 0644: chown root:root {path} && chmod 600 {path}")]


def test_doctor_never_shows_a_value(stored: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (stored / "gateway-token").chmod(0o640)
    for finding in doctor.check_credentials("clawsvc.service"):
        print(finding.line())
    out = capsys.readouterr().out
    assert "FAIL" in out and KEY not in out and TOKEN not in out


def test_a_symlink_planted_as_the_store_is_never_listed_deleted_or_removed_through(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PATH", credstore.INSTALL_ROOT_ENV):
        monkeypatch.setenv(name, env[name])
    precious = tmp_path / "victim" / "gateway-token"
    precious.parent.mkdir()
    precious.write_text("keep me\n")
    store = root_of(env) / STORE
    store.parent.mkdir(parents=True)
    store.symlink_to(precious.parent)
    for call in (lambda: credstore.delete("clawsvc.service", "gateway-token"),
                 lambda: credstore.remove_unit_credentials("clawsvc.service"),
                 lambda: credstore.stored_credentials("clawsvc.service")):
        with pytest.raises(credstore.CredstoreError, match=f"{store} is a symbolic link .*remove the link"):
            call()
    assert precious.read_text() == "keep me\n" and store.is_symlink()
    done = keys(env, "delete", "gateway-token")
    assert done.returncode == 1 and "is a symbolic link" in done.stderr and len(done.stderr.splitlines()) == 1
    assert precious.exists()


@needs_root
@pytest.mark.parametrize(("stdin", "message"), [
    (b"\xff\xfe-not-utf8\n", "the key on stdin is not UTF-8 text: nothing stored"),
    (b"k" * (10 * 1024 * 1024), "the first line on stdin is longer than 64 KiB, which is no key: nothing stored"),
    (None, "no stdin to read the key from"),
])
def test_absurd_stdin_is_one_line_and_stores_nothing(env: dict[str, str], stdin: bytes | None, message: str) -> None:
    argv = [sys.executable, "-m", "clawsvc", "keys", "set", "anthropic", "--store", "credential"]
    if stdin is None:  # stdin closed, as with `<&-`
        argv = ["sh", "-c", 'exec "$@" <&-', "sh", *argv]
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60,
                          stdin=None if stdin is not None else subprocess.DEVNULL)
    err = done.stderr.decode(errors="replace")
    assert (done.returncode, err) == (1, f"clawsvc keys: {message}" + ("; pipe the key alone, on one line\n"
                                                                       if stdin is not None else "\n"))
    assert not (root_of(env) / STORE).exists() and tool_calls(env) == []


def test_a_huge_provider_name_is_refused_before_anything_is_read(env: dict[str, str]) -> None:
    done = keys(env, "set", "a" * 65, stdin=KEY)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and len(done.stderr) < 300
    assert "is not a provider name (up to 64 " in done.stderr
    assert not (root_of(env) / "etc").exists()


@needs_root
def test_the_gateways_cli_gets_the_credentials_the_unit_gets(env: dict[str, str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`clawsvc openclaw` as root: the unit's encrypted credentials decrypted (over a pipe), in the service's order:
    a credential wins over the token the service generated, as it does in the unit."""
    from clawsvc.config import Config, GatewayConfig
    from clawsvc.secrets import cli_secrets

    assert keys(env, "set", "gateway-token", stdin=TOKEN).returncode == 0
    assert keys(env, "set", "anthropic", stdin=KEY).returncode == 0
    for name in ("PATH", credstore.INSTALL_ROOT_ENV, "PYTHON_KEYRING_BACKEND", "FAKE_CREDS_LOG", "FAKE_CREDS_SECRET"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "gateway-token").write_text("generated-" + "g" * 30 + "\n")
    (state / "gateway-token").chmod(0o600)
    config = Config(gateway=GatewayConfig(state_dir=state), providers=("anthropic", "openai"))
    token, provider_env = cli_secrets(config, "clawsvc.service")
    assert token == TOKEN and provider_env == {"ANTHROPIC_API_KEY": KEY}
    assert ["decrypt", "--name=gateway-token", str(root_of(env) / STORE / "gateway-token"), "-"] in tool_calls(env)
    (root_of(env) / STORE / "gateway-token").unlink()
    assert cli_secrets(config, "clawsvc.service")[0] == "generated-" + "g" * 30
