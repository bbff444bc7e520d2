"""Gateway token and provider keys: order of sources, generation, redaction, keyring trouble on headless boxes.

The keyring is only ever touched in clawsvc.secrets.keyring_child processes, so the tests choose its backend the way
an admin would, through PYTHON_KEYRING_BACKEND (test backends in tests/helpers/keyring_file_backend.py).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clawsvc import secrets
from clawsvc.config import AuthConfig, Config, GatewayConfig
from clawsvc.logs import MASK, redact
from clawsvc.secrets import SecretError, keyring_client

HELPERS = Path(__file__).parent / "helpers"
FILE_BACKEND = "keyring_file_backend.FileKeyring"

Store = Callable[[str, str], None]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No inherited credentials, a fresh keyring state, no keyring backend unless the test picks one."""
    caplog.set_level(logging.INFO)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("KEYRING_FILE", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HELPERS), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    monkeypatch.setattr(keyring_client._KeyringState, "broken", None)
    monkeypatch.setattr(keyring_client._KeyringState, "warned", False)
    yield


@pytest.fixture
def no_keyring() -> None:
    """The autouse default: keyring.backends.fail.Keyring, what a headless server without a backend gets."""


@pytest.fixture
def file_keyring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Store:
    """Selects the JSON-file backend; returns a function that stores a value the way that backend does."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", FILE_BACKEND)
    path = tmp_path / "keyring.json"

    def store(username: str, value: str) -> None:
        data = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**data, f"clawsvc/{username}": value}))

    return store


def keyring_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings about the keyring itself (a missing provider key is reported on its own)."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "keyring" in r.getMessage()]


def stored(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "keyring.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argv of every process clawsvc.secrets starts."""
    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(list(args))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(keyring_client.subprocess, "Popen", popen)
    return started


def config_for(tmp_path: Path, token_file: Path | None = None,
               providers: tuple[str, ...] = ("anthropic", "openai", "google", "openrouter")) -> Config:
    return Config(gateway=GatewayConfig(state_dir=tmp_path / "state"), auth=AuthConfig(token_file=token_file),
                  providers=providers)


def test_token_file_wins_and_is_redacted(tmp_path: Path, file_keyring: Store) -> None:
    file_keyring("gateway-token", "keyring-token-value-0001")
    token_file = tmp_path / "token"
    token_file.write_text("file-token-value-0000000001\n")
    token_file.chmod(0o600)
    assert secrets.load_gateway_token(config_for(tmp_path, token_file)) == ("file-token-value-0000000001",
                                                                             f"file {token_file}")
    assert redact("x file-token-value-0000000001 y") == f"x {MASK} y"


def test_token_file_problems_are_one_line_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(SecretError, match=rf"cannot read auth.token_file {tmp_path}/absent: No such file"):
        secrets.load_gateway_token(config_for(tmp_path, tmp_path / "absent"))
    with pytest.raises(SecretError, match=rf"auth.token_file {tmp_path} is a directory, not a regular file"):
        secrets.load_gateway_token(config_for(tmp_path, tmp_path))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SecretError, match="is empty"):
        secrets.load_gateway_token(config_for(tmp_path, empty))
    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(SecretError, match="too short") as caught:
        secrets.load_gateway_token(config_for(tmp_path, short))
    assert "abc" not in str(caught.value)
    loose = tmp_path / "loose"
    loose.write_text("loose-token-value-0000000001")
    loose.chmod(0o644)
    secrets.load_gateway_token(config_for(tmp_path, loose))
    assert f"chmod 600 {loose}" in caplog.text and "loose-token-value" not in caplog.text


def test_keyring_before_credentials(tmp_path: Path, file_keyring: Store, credentials: Path) -> None:
    (credentials / "gateway-token").write_text("credential-token-000000001")
    file_keyring("gateway-token", "keyring-token-value-0001")
    assert secrets.load_gateway_token(config_for(tmp_path)) == ("keyring-token-value-0001", "keyring")


def test_credentials_dir_when_no_keyring_backend_with_one_warning(tmp_path: Path, no_keyring: None,
                                                                  credentials: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    (credentials / "gateway-token").write_text("credential-token-000000001\n")
    (credentials / "anthropic-api-key").write_text("sk-ant-credential-0001")
    config = config_for(tmp_path)
    assert secrets.load_gateway_token(config) == ("credential-token-000000001", "credential gateway-token")
    assert secrets.provider_env(config) == {"ANTHROPIC_API_KEY": "sk-ant-credential-0001"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "keyring not used" in warnings[0] and "CREDENTIALS_DIRECTORY" in warnings[0]
    assert "sk-ant-credential-0001" not in caplog.text
    assert redact("sk-ant-credential-0001") == MASK


def test_generated_once_0600_and_reused(tmp_path: Path, no_keyring: None) -> None:
    config = config_for(tmp_path)
    token, source = secrets.load_gateway_token(config)
    path = tmp_path / "state" / "gateway-token"
    assert source == f"generated {path}"
    assert len(token) >= 40 and path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secrets.load_gateway_token(config) == (token, source)
    assert [p.name for p in path.parent.iterdir()] == ["gateway-token"]  # no temp file left


def test_concurrent_first_starts_agree_on_one_token(tmp_path: Path, no_keyring: None) -> None:
    config = config_for(tmp_path)
    tokens: list[str] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        barrier.wait()
        tokens.append(secrets.load_gateway_token(config)[0])

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(tokens) == 8 and len(set(tokens)) == 1


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path, no_keyring: None) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = Config(gateway=GatewayConfig(state_dir=blocker / "state"))
    with pytest.raises(SecretError, match=rf"cannot store a generated gateway token in {blocker}/state"):
        secrets.load_gateway_token(config)


def test_provider_keys_keyring_then_credentials_under_openclaw_names(tmp_path: Path, file_keyring: Store,
                                                                    credentials: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    file_keyring("anthropic", "sk-ant-keyring-0001")
    file_keyring("google", "gem-keyring-0001")
    (credentials / "anthropic-api-key").write_text("sk-ant-credential-0001")
    (credentials / "openrouter-api-key").write_text("sk-or-credential-0001\n")
    (credentials / "my-llm-api-key").write_text("custom-credential-0001")
    env = secrets.provider_env(config_for(tmp_path, providers=("anthropic", "openai", "google", "openrouter",
                                                                "my-llm")))
    assert env == {"ANTHROPIC_API_KEY": "sk-ant-keyring-0001", "GEMINI_API_KEY": "gem-keyring-0001",
                   "OPENROUTER_API_KEY": "sk-or-credential-0001", "MY_LLM_API_KEY": "custom-credential-0001"}
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("provider API keys"))
    assert "anthropic (keyring)" in summary and "none for openai" in summary
    for value in env.values():
        assert value not in caplog.text and redact(value) == MASK


def keyring_children_of(tmp_path: Path) -> list[int]:
    """Live keyring children started for this test (found by the test's own KEYRING_FILE in their env)."""
    marker = f"KEYRING_FILE={tmp_path}/keyring.json".encode()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"clawsvc.secrets.keyring_child" in (proc / "cmdline").read_bytes() and \
                    marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_hanging_keyring_is_killed_at_the_deadline_and_falls_back(tmp_path: Path, credentials: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   children: list[list[str]],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring_file_backend.HangingKeyring")
    monkeypatch.setattr(keyring_client, "KEYRING_TIMEOUT", 3.0)  # well above a child's start-up on a busy box
    (credentials / "gateway-token").write_text("credential-token-000000001")
    started = time.monotonic()
    assert secrets.load_gateway_token(config_for(tmp_path))[1] == "credential gateway-token"
    assert time.monotonic() - started < 30
    assert keyring_children_of(tmp_path) == []  # killed, not left waiting for a prompt
    assert secrets.provider_env(config_for(tmp_path)) == {}  # no second wait: the keyring is marked broken
    assert len(children) == 1
    warnings = keyring_warnings(caplog)
    assert len(warnings) == 1 and "did not answer within 3s" in warnings[0]
    assert secrets.keyring_status() == (False, "the keyring did not answer within 3s "
                                               "(a locked or unreachable Secret Service?)")


def test_keyring_status_and_key_management(tmp_path: Path, file_keyring: Store) -> None:
    assert secrets.keyring_status() == (True, FILE_BACKEND)
    secrets.set_key("openai", "  sk-openai-0001\n")
    assert stored(tmp_path) == {"clawsvc/openai": "sk-openai-0001"}
    assert secrets.stored_providers(config_for(tmp_path)) == ["openai"]
    assert secrets.delete_key("openai") is True
    assert secrets.delete_key("openai") is False
    assert secrets.stored_providers(config_for(tmp_path)) == []


def test_key_management_without_backend_says_what_to_do(no_keyring: None) -> None:
    usable, description = secrets.keyring_status()
    assert not usable and "keyring.backends.fail.Keyring" in description
    with pytest.raises(secrets.KeyringUnavailable, match="--store credential") as caught:
        secrets.set_key("anthropic", "sk-ant-never-stored-0001")
    assert "sk-ant-never-stored-0001" not in str(caught.value)


def test_a_broken_backend_is_one_warning_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "no_such_module.Keyring")
    config = config_for(tmp_path)
    assert secrets.load_gateway_token(config)[1] == f"generated {tmp_path}/state/gateway-token"
    assert secrets.provider_env(config) == {}
    warnings = keyring_warnings(caplog)
    assert len(warnings) == 1 and "keyring not used: the keyring failed" in warnings[0], warnings
    assert "no provider API key found for anthropic, openai" in caplog.text  # its own warning, with the fix


def test_one_keyring_child_per_load_and_no_secret_in_its_argv(tmp_path: Path, file_keyring: Store,
                                                               children: list[list[str]]) -> None:
    file_keyring("gateway-token", "keyring-token-value-0001")
    file_keyring("anthropic", "sk-ant-keyring-0001")
    file_keyring("openai", "sk-openai-keyring-0001")
    config = config_for(tmp_path)
    assert secrets.load_all(config) == ("keyring-token-value-0001", "keyring",
                                        {"ANTHROPIC_API_KEY": "sk-ant-keyring-0001",
                                         "OPENAI_API_KEY": "sk-openai-keyring-0001"})
    assert children == [[sys.executable, "-m", "clawsvc.secrets.keyring_child"]]
    file_keyring("anthropic", "sk-ant-rotated-0002")  # nothing is cached: a later load reads afresh
    assert secrets.load_all(config)[2]["ANTHROPIC_API_KEY"] == "sk-ant-rotated-0002"
    assert len(children) == 2


LOAD_IN_A_SERVICE_PROCESS = """
import json, sys
from pathlib import Path
from clawsvc.service import run as service
from clawsvc.config import AuthConfig, Config, GatewayConfig
config = Config(gateway=GatewayConfig(state_dir=Path(sys.argv[1])), auth=AuthConfig(token_file=None),
                providers=("anthropic", "openai"))
token, env = service.load_secrets(config)
print(json.dumps({"keyring_imported": sorted(m for m in sys.modules if m.split(".")[0] == "keyring"),
                  "token_is_from_keyring": token == "keyring-token-value-0001", "env": sorted(env)}))
"""


def test_the_service_process_never_imports_keyring(tmp_path: Path, file_keyring: Store) -> None:
    file_keyring("gateway-token", "keyring-token-value-0001")
    file_keyring("openai", "sk-openai-keyring-0001")
    done = subprocess.run([sys.executable, "-c", LOAD_IN_A_SERVICE_PROCESS, str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"keyring_imported": [], "token_is_from_keyring": True,
                                       "env": ["OPENAI_API_KEY"]}
    assert "keyring-token-value-0001" not in done.stderr and "sk-openai-keyring-0001" not in done.stderr


def test_keyring_lookup_in_a_fresh_process_does_not_hang_without_a_session_bus(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS", "PYTHON_KEYRING", "CREDENTIALS"))}
    code = ("from clawsvc import secrets; from clawsvc.config import Config, GatewayConfig; "
            f"c = Config(gateway=GatewayConfig(state_dir=__import__('pathlib').Path({str(tmp_path)!r})));"
            "print(secrets.load_gateway_token(c)[1])")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"generated {tmp_path}/gateway-token"


@pytest.mark.realgateway
def test_provider_env_names_are_the_ones_openclaw_reads(gateway_install) -> None:
    docs = gateway_install.entry.parent / "docs" / "providers"
    for provider in ("anthropic", "openai", "google", "openrouter"):
        name = secrets.provider_env_name(provider)
        assert name in (docs / f"{provider}.md").read_text(), (provider, name)


def test_the_keyring_child_ignores_a_keyring_module_in_the_callers_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trap = tmp_path / "cwd"
    trap.mkdir()
    marker = tmp_path / "imported-from-cwd"
    (trap / "keyring.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(trap)
    secrets.keyring_status()
    assert not marker.exists(), "`python -m` in the caller's directory imported its keyring.py"


def test_describe_names_the_source_load_takes_at_every_step_and_stores_nothing(
        tmp_path: Path, file_keyring: Store, credentials: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = config_for(tmp_path)
    state = tmp_path / "state"
    assert secrets.describe_token_source(config) == secrets.TokenSource(
        f"none yet: will be generated on first start at {state}/gateway-token")
    assert not state.exists() and caplog.records == []

    def both(config: Config) -> tuple[str, str]:
        return secrets.load_gateway_token(config)[1], secrets.describe_token_source(config).source

    assert both(config) == (f"generated {state}/gateway-token",) * 2
    (credentials / "gateway-token").write_text("credential-token-000000001")
    assert both(config) == ("credential gateway-token",) * 2
    file_keyring("gateway-token", "keyring-token-value-0001")
    assert both(config) == ("keyring",) * 2
    token_file = tmp_path / "token"
    token_file.write_text("file-token-value-0000000001\n")
    token_file.chmod(0o644)
    config = config_for(tmp_path, token_file)
    assert both(config) == (f"file {token_file}",) * 2
    described = secrets.describe_token_source(config)
    assert described.problem is None and f"chmod 600 {token_file}" in str(described.warning)

def test_describe_reports_a_refused_token_as_a_problem_without_raising(tmp_path: Path, no_keyring: None,
                                                                       credentials: Path) -> None:
    (credentials / "gateway-token").write_text("abc")
    config = config_for(tmp_path)
    described = secrets.describe_token_source(config)
    assert described.source == "credential gateway-token" and described.problem is not None
    with pytest.raises(SecretError, match="too short") as caught:
        secrets.load_gateway_token(config)
    assert str(caught.value) == described.problem and "abc" not in described.problem
