"""`clawsvc keys` as a real command: a file-backed keyring selected through PYTHON_KEYRING_BACKEND."""

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
    config.write_text("providers: [anthropic, openai, google]\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS", "CREDENTIALS"))}
    return {**base, "PYTHON_KEYRING_BACKEND": "keyring_file_backend.FileKeyring", "PYTHONPATH": str(HELPERS),
            "KEYRING_FILE": str(tmp_path / "keyring.json"), "CLAWSVC_CONFIG": str(config)}


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
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert rows["anthropic"].endswith(" stored") and rows["openai"].endswith("not stored")
    assert "GEMINI_API_KEY" in rows["google"]

    assert keys(env, "delete", "anthropic").returncode == 0
    assert stored(env) == {}
    again = keys(env, "delete", "anthropic")
    assert again.returncode == 1 and "no API key for anthropic" in again.stderr
    for result in (done, listing, again):
        assert KEY not in result.stdout + result.stderr


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


def test_no_keyring_backend_exits_1_with_a_clear_message(env: dict[str, str]) -> None:
    env = {**env, "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring"}
    for args in (("set", "anthropic"), ("delete", "anthropic"), ("list",)):
        done = keys(env, *args, stdin=KEY)
        assert done.returncode == 1, (args, done.stderr)
        assert "no keyring backend" in done.stderr and "LoadCredential=" in done.stderr
        assert "Traceback" not in done.stderr and KEY not in done.stderr


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
