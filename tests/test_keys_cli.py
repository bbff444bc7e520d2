"""`clawsvc keys` as a real command: a file-backed keyring selected through PYTHON_KEYRING_BACKEND, credentials
below a tmp $CLAWSVC_INSTALL_ROOT (encrypted credentials themselves: tests/test_credstore.py)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

HELPERS = Path(__file__).parent / "helpers"
KEY = "sk-ant-api03-" + "Q7x" * 10


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "clawsvc.yaml"
    config.write_text(f"providers: [anthropic, openai, google]\ngateway: {{state_dir: {tmp_path / 'state'}}}\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS", "CREDENTIALS"))}
    return {**base, "PYTHON_KEYRING_BACKEND": "keyring_file_backend.FileKeyring", "PYTHONPATH": str(HELPERS),
            "KEYRING_FILE": str(tmp_path / "keyring.json"), "CLAWSVC_CONFIG": str(config),
            "CLAWSVC_INSTALL_ROOT": str(tmp_path / "root")}


def keys(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clawsvc", "keys", *args], input=stdin, env=env,
                          capture_output=True, text=True, timeout=60)


def stored(env: dict[str, str]) -> dict[str, str]:
    path = Path(env["KEYRING_FILE"])
    return json.loads(path.read_text()) if path.exists() else {}


def test_set_list_delete_never_print_the_value(env: dict[str, str]) -> None:
    done = keys(env, "set", "anthropic", stdin=KEY + "\n")
    assert done.returncode == 0, done.stderr
    assert stored(env) == {"clawsvc/anthropic": KEY}
    assert "ANTHROPIC_API_KEY" in done.stdout

    listing = keys(env, "list")
    assert listing.returncode == 0
    assert listing.stdout.startswith("keyring: keyring_file_backend.FileKeyring\n")
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[2:]}
    assert rows["anthropic"].endswith(" keyring") and rows["openai"].endswith("not stored")
    token_path = Path(env["CLAWSVC_CONFIG"]).parent / "state" / "gateway-token"
    assert "GEMINI_API_KEY" in rows["google"]
    assert rows["gateway-token"].endswith(f"none yet: will be generated on first start at {token_path}")

    assert keys(env, "delete", "anthropic").returncode == 0
    assert stored(env) == {}
    again = keys(env, "delete", "anthropic")
    assert again.returncode == 1 and "no key for anthropic is stored in the keyring" in again.stderr
    for result in (done, listing, again):
        assert KEY not in result.stdout + result.stderr


def test_list_names_the_token_the_service_generated(env: dict[str, str]) -> None:
    """Not "not stored": the service generated it under its state dir, and that is where it lives."""
    state = Path(env["CLAWSVC_CONFIG"]).parent / "state"
    state.mkdir(mode=0o700)
    (state / "gateway-token").write_text("generated-" + "t" * 30 + "\n")
    (state / "gateway-token").chmod(0o600)
    listing = keys(env, "list")
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if line.startswith("gateway-token"))
    assert row.endswith(f"generated {state / 'gateway-token'}")
    assert "generated-" + "t" * 30 not in listing.stdout + listing.stderr


def test_provider_outside_the_config_is_stored_with_a_note(env: dict[str, str]) -> None:
    done = keys(env, "set", "openrouter", stdin=KEY)
    assert done.returncode == 0
    assert "openrouter is not listed under providers:" in done.stderr


def test_bad_input_is_refused(env: dict[str, str]) -> None:
    empty = keys(env, "set", "openai", stdin="")
    assert empty.returncode == 1 and "empty key" in empty.stderr
    bad = keys(env, "set", "Open AI", stdin=KEY)
    assert bad.returncode == 2 and "not a provider name" in bad.stderr
    assert stored(env) == {}


def test_gateway_token_goes_where_the_service_looks_for_it(env: dict[str, str]) -> None:
    done = keys(env, "set", "gateway-token", stdin=KEY)
    assert done.returncode == 0, done.stderr
    assert stored(env) == {"clawsvc/gateway-token": KEY}
    assert "stored the gateway token in the keyring" in done.stdout and "not listed" not in done.stderr


def test_no_keyring_backend(env: dict[str, str]) -> None:
    env = {**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    refused = keys(env, "set", "anthropic", "--store", "keyring", stdin=KEY)
    assert refused.returncode == 1
    assert "no keyring backend" in refused.stderr and "--store credential" in refused.stderr
    listing = keys(env, "list")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("keyring: none (no keyring backend")
    absent = keys(env, "delete", "anthropic")
    assert absent.returncode == 1 and "no key for anthropic is stored" in absent.stderr
    for done in (refused, listing, absent):
        assert "Traceback" not in done.stderr and KEY not in done.stdout + done.stderr


def test_bad_config_exits_78(env: dict[str, str], tmp_path: Path) -> None:
    Path(env["CLAWSVC_CONFIG"]).write_text("providers: [Bad Name]\n")
    assert keys(env, "list").returncode == 78


def _read_until(fd: int, needle: bytes, timeout: float = 30.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {seen!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {needle!r}: {seen!r}"
            seen += chunk
    return seen


def test_terminal_prompt_does_not_echo(env: dict[str, str]) -> None:
    controller, terminal = os.openpty()
    child = subprocess.Popen([sys.executable, "-m", "clawsvc", "keys", "set", "openai"], env=env,
                             stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(terminal)
    try:
        assert child.stderr is not None
        _read_until(child.stderr.fileno(), b"(input hidden): ")
        os.write(controller, (KEY + "\n").encode())
        assert child.wait(60) == 0
        echoed = b""
        while select.select([controller], [], [], 0.2)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            echoed += chunk
        assert KEY.encode() not in echoed
        assert stored(env) == {"clawsvc/openai": KEY}
    finally:
        child.kill()
        child.wait(30)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
        os.close(controller)
