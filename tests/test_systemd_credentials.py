"""Headless secrets for real: `clawsvc keys set` with no keyring backend stores an encrypted systemd credential
(real systemd-creds) for the shipped clawsvc.service, and a restart delivers it to the real gateway, in a booted
systemd 252 guest (tests/systemd_guest.py). Values are compared, never printed.
Run alone with:  pytest -m systemd tests/test_systemd_credentials.py
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from realgw import QUIET_ENV
from systemd_guest import Guest, booted_systemd, guest_path_for

pytestmark = [pytest.mark.systemd, pytest.mark.realgateway, pytest.mark.timeout(900)]

UNITS = Path(__file__).resolve().parent.parent / "units"
CONFIG = "/etc/clawsvc/clawsvc.yaml"
UNIT = "clawsvc.service"
STORE = "/etc/credstore.encrypted/clawsvc/clawsvc"
DROPIN = "/etc/systemd/system/clawsvc.service.d/50-clawsvc-credentials.conf"
START_TIMEOUT = 240.0  # systemctl (re)start waits for READY: the gateway needs ~7 s idle, far more when loaded
KEY = "sk-ant-api03-" + secrets.token_urlsafe(24)
TOKEN = secrets.token_urlsafe(32)


def config_text(command: tuple[str, ...]) -> str:
    env = "".join(f"    {key}: \"{value}\"\n" for key, value in QUIET_ENV.items())
    return (f"gateway:\n  command: {json.dumps(list(command))}\n  port: 18789\n  start_timeout: 180s\n"
            f"  stop_timeout: 10s\n  env:\n{env}providers: [anthropic, openai]\n")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory, gateway_install) -> Iterator[Guest]:
    """The shipped clawsvc.service (set up by hand, so this test does not depend on `clawsvc install`), its
    user and a config naming the real gateway; no keyring backend (no D-Bus session) and no credential yet."""
    gateway_root = Path(os.path.commonpath([gateway_install.node, gateway_install.entry]))
    guest_root = guest_path_for(gateway_root, "gateway")
    command = tuple(str(guest_root / Path(p).relative_to(gateway_root)) for p in gateway_install.command)
    sysusers = (UNITS / "clawsvc.sysusers.conf").read_text()
    files = {CONFIG: config_text(command), "/etc/sysusers.d/clawsvc.conf": sysusers}
    with booted_systemd(tmp_path_factory.mktemp("credentials-guest"), units={UNIT: (UNITS / UNIT).read_text()},
                        files=files, binds={gateway_root: guest_root}) as booted:
        booted.run("systemd-sysusers", "/etc/sysusers.d/clawsvc.conf", check=True)
        booted.systemctl("daemon-reload", check=True)
        yield booted
        print(booted.journal(UNIT)[-6000:])  # shown by pytest when a test failed


def clawsvc(guest: Guest, *args: str, stdin: str | None = None, user: str | None = None) -> tuple[int, str, str]:
    done = guest.run("clawsvc", *args, input=stdin, user=user, timeout=120)
    for secret in (KEY, TOKEN):
        assert secret not in done.stdout + done.stderr, f"`clawsvc {' '.join(args)}` printed a secret"
    return done.returncode, done.stdout, done.stderr


def restart(guest: Guest) -> str:
    """Restart the unit (returns after READY); its new MainPID."""
    guest.systemctl("reset-failed", UNIT)
    result = guest.systemctl("restart", UNIT, timeout=START_TIMEOUT)
    assert result.returncode == 0, f"{result.stderr}\n{guest.journal(UNIT)[-4000:]}"
    return guest.show(UNIT, "MainPID")["MainPID"]


def gateway_environ(guest: Guest) -> dict[str, str]:
    code, out, err = clawsvc(guest, "status", "--json", "-c", CONFIG, user="clawsvc")
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "running", status
    raw = guest.run("cat", f"/proc/{status['pid']}/environ", check=True).stdout
    return dict(item.partition("=")[::2] for item in raw.split("\0") if item)


def loaded_dropins(guest: Guest) -> list[str]:
    """The drop-ins systemd has loaded for the unit (what it knows since its last daemon-reload)."""
    props = guest.show(UNIT, "DropInPaths", "NeedDaemonReload")
    assert props["NeedDaemonReload"] == "no", "clawsvc keys changed the unit without a daemon-reload"
    return props["DropInPaths"].split()


def service_log(guest: Guest, main_pid: str) -> list[str]:
    entries = [json.loads(line) for line in guest.journal(UNIT, output="json").splitlines() if line.strip()]
    return [str(e.get("MESSAGE", "")) for e in entries if e.get("_PID") == main_pid]


def test_guest_root_is_shared_so_credentials_can_be_delivered(guest: Guest) -> None:
    root_mount = next(line for line in guest.run("cat", "/proc/1/mountinfo", check=True).stdout.splitlines()
                      if line.split()[4] == "/")
    assert "shared:" in root_mount, root_mount


def test_provider_key_is_stored_encrypted_and_reaches_the_gateway_after_a_restart(guest: Guest) -> None:
    code, out, err = clawsvc(guest, "keys", "set", "anthropic", stdin=KEY + "\n")
    assert code == 0, err
    stored = f"{STORE}/anthropic-api-key"
    assert stored in out and f"systemctl restart {UNIT}" in out
    on_disk = guest.path(stored)
    assert KEY.encode() not in on_disk.read_bytes()
    assert (on_disk.stat().st_uid, on_disk.stat().st_mode & 0o777) == (0, 0o600)
    assert f"LoadCredentialEncrypted=anthropic-api-key:{stored}" in guest.path(DROPIN).read_text()
    # `keys set` ran daemon-reload: systemd already knows the credential
    assert DROPIN in loaded_dropins(guest)

    main_pid = restart(guest)
    delivered = gateway_environ(guest).get("ANTHROPIC_API_KEY") == KEY
    assert delivered, "ANTHROPIC_API_KEY in the gateway's environment is not the stored key"
    assert any("anthropic (credential anthropic-api-key)" in m for m in service_log(guest, main_pid))

    code, out, err = clawsvc(guest, "keys", "list")
    assert code == 0, err
    assert out.startswith("keyring: none (")
    row = next(line for line in out.splitlines() if line.startswith("anthropic "))
    assert row.endswith(f"credential {stored}")

    code, out, err = clawsvc(guest, "doctor")
    credential_lines = [line for line in out.splitlines() if "credentials:" in line]
    assert credential_lines and credential_lines[-1].startswith("ok") and "each decrypts" in credential_lines[-1], out

    code, out, err = clawsvc(guest, "keys", "delete", "anthropic")
    assert code == 0, err
    assert not on_disk.exists() and not guest.path(DROPIN).exists()
    assert DROPIN not in loaded_dropins(guest)
    restart(guest)
    assert "ANTHROPIC_API_KEY" not in gateway_environ(guest)


def test_gateway_token_from_a_credential_is_the_one_the_gateway_accepts(guest: Guest) -> None:
    code, out, err = clawsvc(guest, "keys", "set", "gateway-token", stdin=TOKEN)
    assert code == 0, err
    assert TOKEN.encode() not in guest.path(f"{STORE}/gateway-token").read_bytes()
    try:
        main_pid = restart(guest)
        assert any(m.endswith(": gateway token from credential gateway-token") for m in service_log(guest, main_pid))
        given = gateway_environ(guest).get("OPENCLAW_GATEWAY_TOKEN") == TOKEN
        assert given, "the gateway was not started with the stored token"
        code, out, err = clawsvc(guest, "rpc", "health", "-c", CONFIG, user="clawsvc")
        assert code == 0, err
        assert isinstance(json.loads(out), dict)
    finally:
        assert clawsvc(guest, "keys", "delete", "gateway-token")[0] == 0
    assert not guest.path(f"{STORE}/gateway-token").exists()
