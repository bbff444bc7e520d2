"""The start plan (clawsvc/service/startplan.py): written after a start, used by the next one with the same
arguments, cwd and environment, and only when everything it names is unchanged and trusted."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from double import pid_alive
from startplan_kit import CLI, PlanFiles, early, own_cache

from clawsvc.gateway.spawnenv import ALLOW_UNCONFIGURED, GATEWAY_CONFIG
from clawsvc.service import earlyspawn, startplan

NOBODY = 65534
SCRIPT = """#!/bin/sh
printf '%s\\n' "$@" > "$RECORD.argv"
env > "$RECORD.env"
pwd > "$RECORD.cwd"
exec sleep 60
"""


class Setup(PlanFiles):
    """PlanFiles and a fake gateway program, under tmp_path (0700)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "first-token-value", 0o700)
        self.program = root / "gateway.sh"
        self.program.write_text(SCRIPT)
        self.program.chmod(0o755)

    def save(self, env: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
             cli: list[str] = CLI) -> str:
        launch_env = {**startplan.inherited(os.environ), "RECORD": str(self.record),
                      "OPENCLAW_GATEWAY_TOKEN": "first-token-value", "CLAWSVC_GATEWAY_ID": "0" * 32, **(env or {})}
        return startplan.save(cli, [str(self.program), "gateway", "run", ALLOW_UNCONFIGURED], launch_env,
                              str(self.state), self.port,
                              {"OPENCLAW_GATEWAY_TOKEN": str(self.token), **(secrets or {})},
                              [str(self.config), str(self.program)], [str(self.state)])


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    made = Setup(tmp_path)
    assert own_cache(monkeypatch, tmp_path) == made.cache
    yield made


def test_the_next_start_execs_the_gateway_from_the_plan(setup: Setup) -> None:
    handlers = {signum: signal.getsignal(signum) for signum in earlyspawn.DEADLY}
    path = setup.save()
    assert Path(path) == setup.cache / startplan.FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert b"first-token-value" not in Path(path).read_bytes()  # a secret is written down by its file only
    setup.token.write_text("rotated-token-value\n")  # read at each start, never remembered
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway)
        assert setup.recorded("argv").split("\n")[:4] == ["gateway", "run", ALLOW_UNCONFIGURED, ""]
        env = dict(line.split("=", 1) for line in setup.recorded("env").splitlines() if "=" in line)
        assert env["OPENCLAW_GATEWAY_TOKEN"] == "rotated-token-value"
        assert env["CLAWSVC_GATEWAY_ID"] == gateway.marker and len(gateway.marker) == 32
        assert env["PATH"] == os.environ["PATH"]
        assert setup.recorded("cwd").strip() == str(setup.state)
        assert gateway.differences(gateway.argv, gateway.env, gateway.cwd) == []
        pid = gateway.pid
    assert not pid_alive(pid)  # discarded: killed and reaped
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert {signum: signal.getsignal(signum) for signum in earlyspawn.DEADLY} == handlers  # the guard is gone


def test_the_gateways_own_config_drops_the_unconfigured_flag(setup: Setup) -> None:
    setup.save()
    (setup.state / GATEWAY_CONFIG).write_text("{}")
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway)
        assert ALLOW_UNCONFIGURED not in setup.recorded("argv")


def test_differences_name_what_differs_never_a_value(setup: Setup) -> None:
    setup.save()
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway)
        env = {**gateway.env, "OPENCLAW_GATEWAY_TOKEN": "other-token", "NEW": "x"}
        found = gateway.differences([*gateway.argv, "--verbose"], env, "/elsewhere")
        assert found == ["argv", "cwd", "$NEW", "$OPENCLAW_GATEWAY_TOKEN"]
        assert not any("other-token" in item for item in found)


def test_only_the_same_arguments_cwd_and_environment_find_the_plan(setup: Setup,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    setup.save()
    with early(["run", "-c", "other.yaml"]) as gateway:
        assert isinstance(gateway, str)
    monkeypatch.setenv("CLAWSVC_TEST_EXTRA", "1")
    with early() as gateway:
        assert isinstance(gateway, str)
    monkeypatch.delenv("CLAWSVC_TEST_EXTRA")
    monkeypatch.setenv("INVOCATION_ID", "differs-at-every-start")  # systemd's per-start values do not count
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway)


def test_secret_looking_variables_count_by_name_and_are_not_written_down(setup: Setup,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-value-one")
    setup.save()
    assert b"sk-value-one" not in (setup.cache / startplan.FILE).read_bytes()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-value-two")
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway)
        assert gateway.env["ANTHROPIC_API_KEY"] == "sk-value-two"  # inherited as the config's start would
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with early() as gateway:
        assert isinstance(gateway, str)


@pytest.mark.parametrize("change", ["config edited", "program replaced", "program chmod", "state dir replaced"])
def test_a_changed_file_means_no_early_gateway(setup: Setup, change: str) -> None:
    setup.save()
    if change == "config edited":
        setup.config.write_text("gateway: {port: 2}\n")
    elif change == "program replaced":
        setup.program.unlink()
        setup.program.write_text(SCRIPT)
        setup.program.chmod(0o755)
    elif change == "program chmod":
        setup.program.chmod(0o750)
    else:
        setup.state.rename(setup.root / "old-state")
        setup.state.mkdir(mode=0o700)
    with early() as gateway:
        assert isinstance(gateway, str) and "changed since the plan was written" in gateway
    assert not Path(f"{setup.record}.argv").exists()


@pytest.mark.parametrize("breach", ["plan readable by others", "plan owned by another uid",
                                    "cache dir owned by another uid", "program writable by others",
                                    "program's directory owned by another uid", "token owned by another uid"])
def test_nothing_another_user_could_have_changed_is_used(setup: Setup, breach: str) -> None:
    setup.save()
    plan = setup.cache / startplan.FILE
    if breach == "plan readable by others":
        plan.chmod(0o644)
    elif breach == "plan owned by another uid":
        os.chown(plan, NOBODY, NOBODY)
    elif breach == "cache dir owned by another uid":
        os.chown(setup.cache, NOBODY, NOBODY)
    elif breach == "program writable by others":
        setup.program.chmod(0o777)
    elif breach == "program's directory owned by another uid":
        os.chown(setup.root, NOBODY, NOBODY)  # the program's own stat is unchanged: only the check at use sees it
    else:
        os.chown(setup.token, NOBODY, NOBODY)
    with early() as gateway:
        assert isinstance(gateway, str)
    assert not Path(f"{setup.record}.argv").exists()


def test_a_symlink_in_a_directory_another_user_controls_is_not_trusted(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    target = tmp_path / "program"
    target.write_text("#!/bin/sh\n")
    (theirs / "link").symlink_to(target)
    os.chown(theirs, NOBODY, NOBODY)
    assert startplan.trusted(str(target))
    assert not startplan.trusted(str(theirs / "link"))  # they could point it elsewhere between check and exec


def test_a_sticky_directory_is_trusted_for_what_we_own_in_it(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    ours = sticky / "ours"
    ours.write_text("x")
    theirs = sticky / "theirs"
    theirs.write_text("x")
    os.chown(theirs, NOBODY, NOBODY)
    assert startplan.trusted(str(ours))
    assert not startplan.trusted(str(theirs))
    sticky.chmod(0o777)  # without the sticky bit anyone may swap our entry
    assert not startplan.trusted(str(ours))


def test_a_taken_port_means_no_early_gateway(setup: Setup) -> None:
    setup.save()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", setup.port))
        listener.listen()
        with early() as gateway:
            assert gateway == f"port {setup.port} is taken"


@pytest.mark.parametrize("content", ["", "two words\n", "\xff"])
def test_a_secret_file_that_holds_no_secret_means_no_early_gateway(setup: Setup, content: str) -> None:
    setup.save()
    setup.token.write_bytes(content.encode("latin-1"))
    with early() as gateway:
        assert isinstance(gateway, str)


def test_a_missing_secret_file_means_no_early_gateway(setup: Setup) -> None:
    setup.save()
    setup.token.unlink()
    with early() as gateway:
        assert gateway == f"$OPENCLAW_GATEWAY_TOKEN's file {setup.token} is missing, not one word, or not only ours " \
                          "to change"


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 64, b"not marshal", b"\xfb" * (startplan.MAX_BYTES + 1)])
def test_a_garbled_plan_file_is_ignored_and_replaced(setup: Setup, garbage: bytes) -> None:
    setup.cache.mkdir(mode=0o700)
    plan = setup.cache / startplan.FILE
    plan.write_bytes(garbage)
    plan.chmod(0o600)
    with early() as gateway:
        assert isinstance(gateway, str)
    setup.save()
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway)


def test_a_plan_needs_every_secret_from_a_file(setup: Setup) -> None:
    with pytest.raises(startplan.NotPlannable,
                       match=r"^\$OPENAI_API_KEY not read from a file \(from the keyring or the config\)$"):
        setup.save(env={"OPENAI_API_KEY": "sk-from-the-keyring"})


def test_no_plan_for_a_program_another_user_could_change(setup: Setup) -> None:
    setup.program.chmod(0o777)
    with pytest.raises(startplan.NotPlannable, match="could be changed by another user"):
        setup.save()


def test_switched_off_by_the_environment(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    setup.save()
    monkeypatch.setenv(startplan.OFF_ENV, "off")
    with early() as gateway:
        assert isinstance(gateway, str)
    with pytest.raises(startplan.NotPlannable):
        setup.save()


def test_the_plan_file_keeps_the_last_few_starts(setup: Setup) -> None:
    for n in range(startplan.MAX_PLANS + 3):
        setup.save(cli=["run", "-c", f"config-{n}.yaml"])
    plans = startplan._load(str(setup.cache / startplan.FILE))
    assert len(plans) == startplan.MAX_PLANS
    with early() as gateway:  # the oldest went first
        assert isinstance(gateway, str)
    with early(["run", "-c", f"config-{startplan.MAX_PLANS + 2}.yaml"]) as gateway:
        assert isinstance(gateway, startplan.EarlyGateway)


def test_a_program_that_cannot_be_executed_leaves_no_child(setup: Setup) -> None:
    setup.program.chmod(0o644)  # no exec bit: execve fails in the child
    setup.save()
    before = set(os.listdir("/proc"))
    with early() as gateway:
        assert isinstance(gateway, str)
    assert not any(pid_alive(int(pid)) and _parent(int(pid)) == os.getpid()
                   for pid in set(os.listdir("/proc")) - before if pid.isdigit())


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError):
        return None


def test_the_start_plan_path_imports_next_to_nothing() -> None:
    import subprocess

    code = ("import sys; before = set(sys.modules); import clawsvc.cli, clawsvc.service.startplan; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                timeout=60).stdout.split())
    assert not loaded & {"yaml", "logging", "pathlib", "typing", "subprocess", "socket", "threading",
                         "dataclasses", "re", "argparse", "json", "clawsvc.config", "clawsvc.secrets"}
