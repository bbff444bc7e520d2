"""`clawsvc install` decisions without a service manager: the generated config, `.new` beside an edited one, the
instance port, the reachability check, usage errors, and the systemctl sequence against a fake `systemctl`."""

from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from double.staged import owned_dir
from install_kit import files_below, run_install, write_launcher

from clawsvc.commands.install import genconfig, reach
from clawsvc.commands.install import plan as install
from clawsvc.commands.install import system as install_system
from clawsvc.config import parse_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = (REPO / "etc/clawsvc.yaml").read_text()
STABLE = ("/opt/clawsvc/gateway/current/node", "/opt/clawsvc/gateway/current/node_modules/openclaw/openclaw.mjs")
NOBODY = reach.Account(uid=None, gids=frozenset())


# ---------------------------------------------------------------- the generated config

def test_generated_config_names_the_stable_gateway_and_keeps_the_comments():
    text = genconfig.render(EXAMPLE, genconfig.Settings(STABLE))
    config = parse_config(text)
    assert config.gateway.command == STABLE
    assert config.gateway.port == 18789
    assert text.count("\n") == EXAMPLE.count("\n") and "# The argv that starts OpenClaw" in text
    assert [a for a, b in zip(text.splitlines(), EXAMPLE.splitlines(), strict=True) if a != b] == \
        [f'  command: ["{STABLE[0]}", "{STABLE[1]}"]']


def test_instance_config_has_its_own_port_state_and_socket():
    config = parse_config(genconfig.render(EXAMPLE, genconfig.instance_settings("alpha", STABLE, 18795)))
    assert config.gateway.port == 18795
    assert config.gateway.state_dir == Path("/var/lib/clawsvc/alpha/openclaw")
    assert config.control.socket == Path("/run/clawsvc/alpha/control.sock")


def test_a_command_with_quotes_and_backslashes_round_trips():
    odd = ('/opt/my "gw"/node', "C:\\weird\\path.mjs")
    assert parse_config(genconfig.render(EXAMPLE, genconfig.Settings(odd))).gateway.command == odd


def test_an_example_without_the_command_line_is_refused():
    with pytest.raises(genconfig.ConfigTemplateError, match=r"gateway\.command"):
        genconfig.render(EXAMPLE.replace("  command: [openclaw]\n", ""), genconfig.Settings(STABLE))


def test_free_port_skips_ports_named_by_other_configs_and_listeners(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        (tmp_path / "other.yaml").write_text(f"gateway:\n  port: {taken + 1}\n")
        (tmp_path / "me.yaml").write_text(f"gateway:\n  port: {taken + 2}\n")
        port = genconfig.free_port(tmp_path, skip=tmp_path / "me.yaml", first=taken)
    expected = next(p for p in range(taken + 2, taken + 100) if not genconfig.listening(p))
    assert port == expected


# ---------------------------------------------------------------- files, .new and reruns (install root)

def test_edited_config_is_kept_and_the_new_one_goes_beside_it_once(tmp_path):
    config = Path("/etc/clawsvc/clawsvc.yaml")
    todo = install.plan("system", config, ("/usr/bin/clawsvc",), config_text="gateway:\n  port: 1\n")
    root = tmp_path / "root"
    on_disk = install.below_root(root, config)
    on_disk.parent.mkdir(parents=True)
    on_disk.write_text("gateway:\n  port: 2\n")
    out = io.StringIO()
    written = install.apply(todo, root, out)
    beside = on_disk.with_name("clawsvc.yaml.new")
    assert on_disk.read_text() == "gateway:\n  port: 2\n" and beside.read_text() == "gateway:\n  port: 1\n"
    assert beside in written and on_disk not in written
    assert f"kept     {on_disk} (yours; the generated version differs: wrote {beside}" in out.getvalue()
    stamp = beside.stat().st_mtime_ns
    again = io.StringIO()
    assert install.apply(todo, root, again) == []
    assert beside.stat().st_mtime_ns == stamp and "is in" in again.getvalue()


def test_a_symlink_planted_at_a_temporary_or_new_name_is_replaced_never_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    todo = install.plan("system", Path("/etc/clawsvc/clawsvc.yaml"), ("/usr/bin/clawsvc",),
                        config_text="gateway:\n  port: 1\n")
    root = tmp_path / "root"
    config_dir = root / "etc/clawsvc"
    config_dir.mkdir(parents=True)
    (config_dir / "clawsvc.yaml").write_text("gateway:\n  port: 2\n")  # the admin's: the new one goes beside
    for name in (".clawsvc.yaml.new.clawsvc-tmp", ".clawsvc.service.clawsvc-tmp"):
        where = config_dir if "yaml" in name else root / "etc/systemd/system"
        where.mkdir(parents=True, exist_ok=True)
        (where / name).symlink_to(victim)
    install.apply(todo, root, io.StringIO())
    assert victim.read_text() == "keep me\n"
    beside = config_dir / "clawsvc.yaml.new"
    assert beside.read_text() == "gateway:\n  port: 1\n" and not beside.is_symlink()
    assert (beside.stat().st_mode & 0o777) == 0o640
    assert not list(config_dir.glob(".*")) and not list((root / "etc/systemd/system").glob(".*"))


def test_staged_system_install_writes_the_config_with_the_gateway_filled_in(tmp_path):
    result = run_install(tmp_path, "--system")
    assert result.returncode == 0, result.stderr
    config = parse_config((tmp_path / "root/etc/clawsvc/clawsvc.yaml").read_text())
    assert config.gateway.command == STABLE
    assert "systemctl enable --now clawsvc.service" in result.stdout


def test_staged_instances_get_successive_ports_and_a_rerun_keeps_them(tmp_path):
    for name in ("alpha", "beta"):
        assert run_install(tmp_path, "--system", "--instance", name).returncode == 0
    root = tmp_path / "root/etc/clawsvc"
    ports = {n: parse_config((root / f"{n}.yaml").read_text()).gateway.port for n in ("alpha", "beta")}
    assert ports["beta"] == ports["alpha"] + 1 or genconfig.listening(ports["alpha"] + 1)
    assert ports["alpha"] >= genconfig.FIRST_INSTANCE_PORT
    stamp = (root / "alpha.yaml").stat().st_mtime_ns
    again = run_install(tmp_path, "--system", "--instance", "alpha")
    assert again.returncode == 0 and f"same     {root}/alpha.yaml" in again.stdout
    assert (root / "alpha.yaml").stat().st_mtime_ns == stamp
    assert "enable --now clawsvc@alpha.service" in again.stdout


def test_instance_with_a_given_port(tmp_path):
    assert run_install(tmp_path, "--system", "--instance", "work", "--port", "19000").returncode == 0
    assert parse_config((tmp_path / "root/etc/clawsvc/work.yaml").read_text()).gateway.port == 19000


@pytest.mark.parametrize("kind", ["--system", "--user"])
def test_a_file_where_the_config_directory_belongs_is_one_line(tmp_path, kind):
    config_dir = tmp_path / ("root/etc/clawsvc" if kind == "--system" else "root" + str(tmp_path / "home/.config"))
    config_dir.parent.mkdir(parents=True)
    config_dir.write_text("")
    result = run_install(tmp_path, kind, "--no-start")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"clawsvc: install: cannot write {config_dir}/")
    assert ": Not a directory; fix what is in its place, then rerun" in result.stderr


def test_dry_run_lists_files_and_commands_and_writes_nothing(tmp_path):
    result = run_install(tmp_path, "--system", "--instance", "alpha", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert files_below(tmp_path / "root") == []
    assert f"# ---- {tmp_path}/root/etc/clawsvc/alpha.yaml" in result.stdout
    assert "systemctl enable --now clawsvc@alpha.service" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("--user", "--instance", "a"), "--instance works with --system only (not --user)"),
    (("--launchd", "--instance", "a"), "--instance works with --system only (not --launchd)"),
    (("--system", "--port", "19000"), "--port sets the port of a new --instance config"),
    (("--system", "--instance", "a", "--port", "70000"), "--port 70000 is not a TCP port"),
    (("--system", "--instance", "Bad Name"), "instance name 'Bad Name' must be"),
])
def test_usage_errors_are_one_line_and_write_nothing(tmp_path, args, message):
    result = run_install(tmp_path, *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files_below(tmp_path / "root") == []


def test_a_clawsvc_below_tmp_is_refused_before_anything_is_written(tmp_path):
    script = write_launcher(owned_dir("clawsvc-test-", Path("/tmp")) / "bin" / "clawsvc")  # wherever tmp_path is
    result = run_install(tmp_path, "--system", exe=(str(script),))
    assert result.returncode == 1
    assert result.stderr.startswith(f"clawsvc: install: nothing was written: clawsvc {script} is below /tmp")
    assert "python3 -m venv /opt/clawsvc/venv" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files_below(tmp_path / "root") == []


# ---------------------------------------------------------------- reachability decisions

@pytest.fixture
def box() -> Iterator[tuple[Path, reach.Sandbox]]:
    """A scratch 'home' (hidden by ProtectHome) and 'tmp' (PrivateTmp) instead of the machine's, in a directory
    every user may traverse (pytest's own tmp dirs are 0700, which the check would rightly refuse)."""
    top = Path(tempfile.mkdtemp(prefix="clawsvc-test-reach-", dir="/var/tmp"))
    try:
        top.chmod(0o755)
        for name in ("home", "tmp", "opt"):
            (top / name).mkdir(mode=0o755)
        (top / "home").chmod(0o700)
        yield top, reach.Sandbox(home=(top / "home",), tmp=(top / "tmp",))
    finally:
        shutil.rmtree(top)


def executable(path: Path, text: str = "\x7fELF") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_venv_on_a_python_below_home_gets_binds_of_both_prefixes(box):
    top, sandbox = box
    python = executable(top / "home/.pyenv/versions/3.11.7/bin/python3.11")
    script = executable(top / "opt/venv/bin/clawsvc", f"#!{python}\n")
    binds = reach.check(reach.clawsvc_needs((str(script),)), NOBODY, sandbox)
    assert binds == (top / "home/.pyenv/versions/3.11.7",)
    text = reach.dropin_text(binds)
    assert "ProtectHome=tmpfs\n" in text and f"BindReadOnlyPaths={binds[0]}\n" in text


def test_nested_prefixes_are_bound_once(box):
    top, sandbox = box
    python = executable(top / "home/py/bin/python3")
    node = executable(top / "home/py/lib/node_modules/x/node")
    needs = [reach.Need(python, "python", "fix"), reach.Need(node, "node", "fix")]
    assert reach.check(needs, NOBODY, sandbox) == (top / "home/py",)


def test_a_program_directly_in_a_home_directory_is_refused(box):
    top, sandbox = box
    python = executable(top / "home/python3")
    with pytest.raises(reach.Unreachable, match=f"{python} is directly in {top / 'home'}"):
        reach.check([reach.Need(python, "python", "fix")], NOBODY, sandbox)


def test_a_program_below_private_tmp_is_refused_with_the_fix(box):
    top, sandbox = box
    script = executable(top / "tmp/venv/bin/clawsvc", "#!/usr/bin/python3\n")
    with pytest.raises(reach.Unreachable, match=r"below .*tmp, which the unit replaces .*fix: python3 -m venv"):
        reach.check(reach.clawsvc_needs((str(script),)), NOBODY, sandbox)


def test_a_directory_the_service_user_cannot_enter_is_named(box):
    top, sandbox = box
    locked = top / "opt/locked"
    script = executable(locked / "bin/clawsvc", "#!/usr/bin/python3\n")
    locked.chmod(0o700)
    with pytest.raises(reach.Unreachable, match=f"cannot enter {locked} \\(mode 0700\\); fix: chmod o\\+x {locked}"):
        reach.check(reach.clawsvc_needs((str(script),)), NOBODY, sandbox)
    owner = reach.Account(uid=locked.stat().st_uid, gids=frozenset())
    assert reach.check(reach.clawsvc_needs((str(script),)), owner, sandbox) == ()


def test_an_unreadable_script_is_refused_but_an_execute_only_binary_is_fine(box):
    top, sandbox = box
    binary = executable(top / "opt/gw/bin/node")
    binary.chmod(0o711)
    entry = top / "opt/gw/node_modules/openclaw/openclaw.mjs"
    entry.parent.mkdir(parents=True)
    entry.write_text("")
    entry.chmod(0o600)
    with pytest.raises(reach.Unreachable, match="may not read"):
        reach.check(reach.gateway_needs((str(binary), str(entry))), NOBODY, sandbox)
    entry.chmod(0o644)
    assert reach.check(reach.gateway_needs((str(binary), str(entry))), NOBODY, sandbox) == ()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a prefix to another user needs root (chown)")
def test_a_prefix_another_user_can_write_is_never_bound_into_the_unit(box):
    top, sandbox = box
    python = executable(top / "home/bob/.venv/bin/python3")
    script = executable(top / "opt/venv/bin/clawsvc", f"#!{python}\n")
    os.chown(top / "home/bob/.venv", 65534, 65534)  # bob's venv: bob could put code there
    with pytest.raises(reach.Unreachable, match=r"is owned by .*65534.*run code as the service user; "
                                                r"or: python3 -m venv /opt/clawsvc/venv"):
        reach.check(reach.clawsvc_needs((str(script),)), NOBODY, sandbox)
    os.chown(top / "home/bob/.venv", 0, 0)
    python.chmod(0o777)  # the interpreter itself writable by everyone
    with pytest.raises(reach.Unreachable, match=r"writable by group/others .*run code as the service user"):
        reach.check(reach.clawsvc_needs((str(script),)), NOBODY, sandbox)
    python.chmod(0o755)
    (top / "home/bob").chmod(0o777)  # a directory on the way that anyone may swap
    with pytest.raises(reach.Unreachable, match=f"directory {top / 'home/bob'} on its path is writable"):
        reach.check(reach.clawsvc_needs((str(script),)), NOBODY, sandbox)
    (top / "home/bob").chmod(0o755)
    assert reach.check(reach.clawsvc_needs((str(script),)), NOBODY, sandbox) == (top / "home/bob/.venv",)


@pytest.mark.parametrize("name", ["py:3", "py\nExecStartPre=/bin/true", 'py"x'])
def test_a_prefix_the_dropin_cannot_name_as_one_path_is_refused(box, name):
    top, sandbox = box
    python = executable(top / "home" / name / "bin/python3")
    with pytest.raises(reach.Unreachable) as refused:
        reach.check([reach.Need(python, "python", "fix")], NOBODY, sandbox)
    assert "BindReadOnlyPaths= cannot take; fix: fix" in str(refused.value) and "\n" not in str(refused.value)


def test_a_bare_gateway_command_is_left_to_check_config():
    assert reach.gateway_needs(("openclaw",)) == []


# ---------------------------------------------------------------- the systemctl sequence (fake systemctl)

FAKE_SYSTEMCTL = """#!/bin/sh
FAKE_LOG=@LOG@ FAKE_STATE=@STATE@
echo "$*" >> "$FAKE_LOG"
case "$*" in
  *--property=NeedDaemonReload*) echo "NeedDaemonReload=no" ;;
  *show*) cat "$FAKE_STATE" ;;
  *"enable --now"*) printf 'LoadState=loaded\\nActiveState=active\\nUnitFileState=enabled\\n' > "$FAKE_STATE" ;;
esac
"""


def fake_script(log: Path, state: Path, text: str = FAKE_SYSTEMCTL) -> str:
    return text.replace("@LOG@", str(log)).replace("@STATE@", str(state))


@pytest.fixture
def fake_systemctl(tmp_path, monkeypatch) -> tuple[Path, Path]:
    bin_dir = tmp_path / "fakebin"
    log, state = tmp_path / "calls", tmp_path / "state"
    executable(bin_dir / "systemctl", fake_script(log, state))
    executable(bin_dir / "journalctl", "#!/bin/sh\necho 'journal line'\n")
    log.write_text("")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")  # servicectl passes PATH on, nothing else
    monkeypatch.setattr(install_system.control, "status_main", lambda args: 0)
    return log, state


def request(tmp_path: Path, no_start: bool = False) -> install_system.Request:
    return install_system.Request("clawsvc.service", Path("/etc/clawsvc/clawsvc.yaml"), None, None, no_start,
                                  False, Path("/"))


def calls(log: Path) -> list[str]:
    return [line.replace("--no-pager ", "") for line in log.read_text().splitlines()]


def test_first_activation_reloads_and_enables_now(tmp_path, fake_systemctl):
    log, state = fake_systemctl
    state.write_text("LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n")
    out = io.StringIO()
    assert install_system.activate(request(tmp_path), True, out) == 0
    assert [c for c in calls(log) if not c.startswith("show")] == ["daemon-reload", "enable --now clawsvc.service"]
    assert "enabled and started clawsvc.service: READY after" in out.getvalue()


def test_unchanged_running_unit_is_left_alone(tmp_path, fake_systemctl):
    log, state = fake_systemctl
    state.write_text("LoadState=loaded\nActiveState=active\nUnitFileState=enabled\n")
    out = io.StringIO()
    assert install_system.activate(request(tmp_path), False, out) == 0
    assert all(c.startswith("show") for c in calls(log))
    assert "nothing to change: clawsvc.service is enabled and running" in out.getvalue()


def test_no_start_only_enables(tmp_path, fake_systemctl):
    log, state = fake_systemctl
    state.write_text("LoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n")
    assert install_system.activate(request(tmp_path, no_start=True), False, io.StringIO()) == 0
    assert [c for c in calls(log) if not c.startswith("show")] == ["enable clawsvc.service"]


def test_a_unit_that_does_not_come_up_prints_the_journal_and_fails(tmp_path, fake_systemctl, capsys):
    _, state = fake_systemctl
    state.write_text("LoadState=loaded\nActiveState=failed\nUnitFileState=enabled\n")
    failing = FAKE_SYSTEMCTL.replace('*"enable --now"*) printf', '*"enable --now"*) exit 1; printf')
    assert failing != FAKE_SYSTEMCTL
    executable(tmp_path / "fakebin" / "systemctl", fake_script(tmp_path / "calls", state, failing))
    out = io.StringIO()
    assert install_system.activate(request(tmp_path), False, out) == 1
    assert "journal line" in out.getvalue()
    assert "clawsvc.service did not start" in capsys.readouterr().err
