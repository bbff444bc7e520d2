"""The shipped units and plist (systemd-analyze verify/security, plistlib) and `clawsvc install`."""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from install_kit import files_below, launcher, run_install

from clawsvc import cli
from clawsvc.commands.install import plan as install
from clawsvc.config import Config, GatewayConfig
from clawsvc.gateway.process import UNIT_STOP_TIMEOUT, stop_bound

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "units"
SYSTEM_UNITS = ("clawsvc.service", "clawsvc@.service")
# Overall exposure of `systemd-analyze security --offline=yes` (lower is better); a change that raises it
# must be a deliberate decision recorded here and in the README.
EXPOSURE_MAX = {"clawsvc.service": 1.6, "clawsvc@.service": 1.6, "user/clawsvc.service": 6.8}
# Keys that may differ between clawsvc.service and the template (everything else, hardening included, must not).
PER_INSTANCE_KEYS = {"Description", "ExecStart", "StateDirectory", "RuntimeDirectory", "RuntimeDirectoryPreserve",
                     "CacheDirectory", "Environment"}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if in_ci():
            pytest.fail("CI=true but systemd-analyze is not installed")
        pytest.skip("systemd-analyze is not installed")
    return tool


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values in order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60, "m": 60}[match.group(2)]


def rendered_copy(tmp_path: Path, relpath: str, command: tuple[str, ...] | None = None,
                  name: str | None = None) -> Path:
    """The shipped unit as `clawsvc install` renders it, with ExecStart= at an executable that exists."""
    command = command or (sys.executable, "-m", "clawsvc")
    text = install.render_unit((UNITS / relpath).read_text(), command, None)
    target = tmp_path / (name or Path(relpath).name)
    target.write_text(text)
    return target


def verify(analyze: str, unit: Path, user: bool, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0")
    if user:  # the user manager's paths need a runtime dir even offline
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    argv = [analyze, *(["--user"] if user else []), "verify", "--recursive-errors=no", str(unit)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)


# ---------------------------------------------------------------- systemd-analyze

@pytest.mark.parametrize("relpath, name", [
    ("clawsvc.service", None),
    ("clawsvc@.service", None),
    ("clawsvc@.service", "clawsvc@work.service"),
    ("user/clawsvc.service", None),
])
def test_unit_verifies_without_any_complaint(analyze, tmp_path, relpath, name):
    unit = rendered_copy(tmp_path, relpath, name=name)
    result = verify(analyze, unit, relpath.startswith("user/"), tmp_path)
    # verify exits 0 on many parse errors (unknown keys, bad values): any output at all is a failure.
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_verify_check_catches_a_bad_key_and_a_bad_value(analyze, tmp_path):
    unit = rendered_copy(tmp_path, "clawsvc.service")
    unit.write_text(unit.read_text().replace("Type=notify", "Type=notfy") + "Bogus=1\n")
    result = verify(analyze, unit, False, tmp_path)
    assert "notfy" in result.stderr
    assert "Bogus" in result.stderr


def test_verify_accepts_an_executable_path_with_space_and_percent(analyze, tmp_path):
    exe = tmp_path / "my tools 100%" / "clawsvc"
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = rendered_copy(tmp_path, "clawsvc.service", command=(str(exe),))
    result = verify(analyze, unit, False, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    exec_start = parse_unit(unit.read_text())["Service"]["ExecStart"][0]
    assert exec_start.startswith('"') and "100%%" in exec_start


@pytest.mark.parametrize("relpath", sorted(EXPOSURE_MAX))
def test_security_exposure_stays_at_the_measured_level(analyze, tmp_path, relpath):
    unit = rendered_copy(tmp_path, relpath)
    user = relpath.startswith("user/")
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    argv = [analyze, *(["--user"] if user else []), "security", "--offline=yes", "--no-pager", str(unit)]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout[-500:]}\n{result.stderr}"
    assert float(match.group(1)) <= EXPOSURE_MAX[relpath]


# ---------------------------------------------------------------- unit contents

@pytest.mark.parametrize("relpath", [*SYSTEM_UNITS, "user/clawsvc.service"])
def test_unit_runs_clawsvc_the_way_the_contract_says(relpath):
    service = parse_unit((UNITS / relpath).read_text())["Service"]
    defaults = GatewayConfig()
    assert service["Type"] == ["notify"] and service["NotifyAccess"] == ["main"]
    assert service["ExecStart"][0].startswith(f"{install.TEMPLATE_EXE} run -c ")
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"] and service["RestartPreventExitStatus"] == ["78"]
    assert service["KillMode"] == ["mixed"]
    assert seconds(service["TimeoutStopSec"][0]) == UNIT_STOP_TIMEOUT >= stop_bound(Config())
    assert defaults.stop_timeout >= 330, "the gateway's own drain policy: 315 s of drain + 15 s to close"
    assert service["OOMPolicy"] == ["continue"]
    assert seconds(service["TimeoutStartSec"][0]) >= defaults.start_timeout
    assert seconds(service["WatchdogSec"][0]) >= 10
    assert service.get("MemoryDenyWriteExecute", ["no"]) == ["no"], "Node's JIT needs W+X memory"
    assert "--token" not in (UNITS / relpath).read_text()


def test_template_differs_from_the_main_unit_only_per_instance():
    main = parse_unit((UNITS / "clawsvc.service").read_text())
    template = parse_unit((UNITS / "clawsvc@.service").read_text())
    assert main["Unit"].keys() == template["Unit"].keys() and main["Install"] == template["Install"]
    shared = {k: v for k, v in main["Service"].items() if k not in PER_INSTANCE_KEYS}
    assert shared == {k: v for k, v in template["Service"].items() if k not in PER_INSTANCE_KEYS}
    assert template["Service"]["ExecStart"] == [f"{install.TEMPLATE_EXE} run -c /etc/clawsvc/%i.yaml"]
    assert template["Service"]["StateDirectory"] == ["clawsvc/%i"]
    assert template["Service"]["RuntimeDirectory"] == ["clawsvc/%i"]
    assert template["Service"]["CacheDirectory"] == ["clawsvc/%i"] and main["Service"]["CacheDirectory"] == ["clawsvc"]
    assert main["Service"]["CacheDirectoryMode"] == template["Service"]["CacheDirectoryMode"] == ["0700"]
    # An instance may write only below its own StateDirectory=: the gateway's HOME must be there, not the user's.
    assert template["Service"]["Environment"] == [*main["Service"]["Environment"], "HOME=%S/clawsvc/%i"]
    assert main["Service"]["RuntimeDirectoryPreserve"] == ["yes"], "stopping clawsvc would delete instance sockets"


def test_system_unit_names_credentials_only_in_comments():
    text = (UNITS / "clawsvc.service").read_text()
    assert "LoadCredential" not in parse_unit(text)["Service"]
    commented = re.findall(r"^#\s+LoadCredential=([\w-]+):", text, re.MULTILINE)
    assert "gateway-token" in commented and "anthropic-api-key" in commented


def test_sysusers_snippet_creates_a_locked_system_user(tmp_path):
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed")
    (tmp_path / "etc").mkdir()
    subprocess.run([tool, f"--root={tmp_path}", str(UNITS / "clawsvc.sysusers.conf")], check=True,
                   capture_output=True)
    entry = next(line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("clawsvc:"))
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert int(uid) < 1000 and home == "/var/lib/clawsvc" and shell.endswith("nologin")
    assert any(line.startswith(f"clawsvc:x:{gid}:") for line in (tmp_path / "etc/group").read_text().splitlines())


# ---------------------------------------------------------------- launchd

def test_plist_is_valid_and_complete():
    plist = plistlib.loads((UNITS / "ai.openclaw.clawsvc.plist").read_bytes())
    assert plist["Label"] == "ai.openclaw.clawsvc"
    assert plist["ProgramArguments"][0] == install.TEMPLATE_EXE
    assert plist["ProgramArguments"][1:3] == ["run", "-c"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ExitTimeOut"] == UNIT_STOP_TIMEOUT >= stop_bound(Config())
    assert plist["StandardOutPath"] and plist["StandardErrorPath"]
    assert isinstance(plist["EnvironmentVariables"], dict) and "PATH" in plist["EnvironmentVariables"]


def test_rendered_plist_has_absolute_paths_only(tmp_path):
    home = tmp_path / "Users" / "ada"
    text = install.render_plist((UNITS / "ai.openclaw.clawsvc.plist").read_text(), ("/opt/cs/bin/clawsvc",),
                                home / ".config/clawsvc/clawsvc.yaml", home)
    plist = plistlib.loads(text.encode())
    assert plist["ProgramArguments"] == ["/opt/cs/bin/clawsvc", "run", "-c", f"{home}/.config/clawsvc/clawsvc.yaml"]
    assert plist["StandardErrorPath"] == f"{home}/Library/Logs/clawsvc/clawsvc.log"
    assert "~" not in text


# ---------------------------------------------------------------- clawsvc install

def test_default_kind():
    assert install.default_kind("darwin", 0) == "launchd"
    assert install.default_kind("linux", 0) == "system"
    assert install.default_kind("linux", 1000) == "user"


def test_dry_run_prints_files_and_next_steps_and_writes_nothing(tmp_path):
    result = run_install(tmp_path, "--system", "--dry-run")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    assert files_below(root) == []
    assert f"# ---- {root}/etc/systemd/system/clawsvc.service" in result.stdout
    assert f"ExecStart={' '.join(launcher())} run -c /etc/clawsvc/clawsvc.yaml" in result.stdout
    assert "systemctl enable --now clawsvc" in result.stdout
    assert "systemd-sysusers /etc/sysusers.d/clawsvc.conf" in result.stdout


def test_system_install_writes_units_sysusers_and_config(tmp_path):
    result = run_install(tmp_path, "--system")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    # The tests' clawsvc lives below a home directory (install_kit): then the unit gets the reachability drop-in.
    reach = "etc/systemd/system/clawsvc.service.d/10-clawsvc-reach.conf"
    dropin = [reach] if install.hidden_paths(launcher()) else []
    assert files_below(root) == sorted(["etc/clawsvc/clawsvc.yaml", "etc/systemd/system/clawsvc.service",
                                        "etc/systemd/system/clawsvc@.service", "etc/sysusers.d/clawsvc.conf",
                                        "etc/systemd/system/clawsvc-alert@.service", *dropin])
    unit = parse_unit((root / "etc/systemd/system/clawsvc.service").read_text())
    assert unit["Service"]["ExecStart"] == [f"{' '.join(launcher())} run -c /etc/clawsvc/clawsvc.yaml"]
    template = parse_unit((root / "etc/systemd/system/clawsvc@.service").read_text())
    assert template["Service"]["ExecStart"] == [f"{' '.join(launcher())} run -c /etc/clawsvc/%i.yaml"]
    alert = parse_unit((root / "etc/systemd/system/clawsvc-alert@.service").read_text())
    exe = " ".join(launcher())
    assert alert["Service"]["ExecStart"] == [f"{exe} alert -c /etc/clawsvc/clawsvc.yaml --unit %i"]
    for text in (unit, template):
        assert text["Unit"]["OnFailure"] == ["clawsvc-alert@%n.service"]
    config = root / "etc/clawsvc/clawsvc.yaml"
    differing = [line for line, shipped in zip(config.read_text().splitlines(),
                                               (REPO / "etc/clawsvc.yaml").read_text().splitlines(), strict=True)
                 if line != shipped]
    assert differing == ['  command: ["/opt/clawsvc/gateway/current/node", '
                         '"/opt/clawsvc/gateway/current/node_modules/openclaw/openclaw.mjs"]']
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert "systemctl daemon-reload" in result.stdout


def test_reinstall_updates_units_but_never_the_config(tmp_path):
    assert run_install(tmp_path, "--system").returncode == 0
    root = tmp_path / "root"
    config, unit = root / "etc/clawsvc/clawsvc.yaml", root / "etc/systemd/system/clawsvc.service"
    config.write_text("gateway:\n  port: 18800\n")
    unit.write_text("[Service]\nExecStart=/old\n")
    result = run_install(tmp_path, "--system")
    assert result.returncode == 0, result.stderr
    assert config.read_text() == "gateway:\n  port: 18800\n"
    assert f"kept     {config}" in result.stdout and f"updated  {unit}" in result.stdout
    assert "ExecStart=/old" not in unit.read_text()
    assert f"same     {root}/etc/sysusers.d/clawsvc.conf" in result.stdout


def test_install_with_config_option_points_the_unit_there(tmp_path):
    result = run_install(tmp_path, "--system", "-c", "/srv/gw/clawsvc.yaml")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    unit = parse_unit((root / "etc/systemd/system/clawsvc.service").read_text())
    assert unit["Service"]["ExecStart"][0].endswith(" run -c /srv/gw/clawsvc.yaml")
    assert (root / "srv/gw/clawsvc.yaml").is_file()


def test_user_install_uses_home_paths(tmp_path):
    home = Path("/home/ada")
    result = run_install(tmp_path, "--user", home=home)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    unit_path = root / "home/ada/.config/systemd/user/clawsvc.service"
    unit = parse_unit(unit_path.read_text())
    assert unit["Service"]["ExecStart"] == [f"{' '.join(launcher())} run -c /home/ada/.config/clawsvc/clawsvc.yaml"]
    assert "User" not in unit["Service"]
    alert = parse_unit((unit_path.parent / "clawsvc-alert@.service").read_text())
    assert alert["Service"]["ExecStart"] == [f"{' '.join(launcher())} alert -c "
                                             "/home/ada/.config/clawsvc/clawsvc.yaml --unit %i"]
    assert unit["Unit"]["OnFailure"] == ["clawsvc-alert@%n.service"]
    config = root / "home/ada/.config/clawsvc/clawsvc.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "systemctl --user enable --now clawsvc" in result.stdout


def test_launchd_install_writes_a_loadable_plist(tmp_path):
    home = Path("/Users/ada")
    result = run_install(tmp_path, "--launchd", home=home)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    plist = plistlib.loads((root / "Users/ada/Library/LaunchAgents/ai.openclaw.clawsvc.plist").read_bytes())
    assert plist["ProgramArguments"] == [*launcher(), "run", "-c", "/Users/ada/.config/clawsvc/clawsvc.yaml"]
    assert (root / "Users/ada/Library/Logs/clawsvc").is_dir(), "launchd does not create log directories"
    assert "launchctl bootstrap gui/$(id -u) /Users/ada/Library/LaunchAgents/ai.openclaw.clawsvc.plist" \
        in result.stdout


def test_installed_units_verify(analyze, tmp_path):
    assert run_install(tmp_path, "--system").returncode == 0
    for name in SYSTEM_UNITS:
        unit = tmp_path / "root/etc/systemd/system" / name
        result = verify(analyze, unit, False, tmp_path)
        assert (result.returncode, result.stderr) == (0, ""), name


def test_warns_when_the_executable_is_hidden_from_a_hardened_unit(tmp_path):
    script = tmp_path / "bin" / "clawsvc"
    script.parent.mkdir()
    script.write_text("#!/root/venv/bin/python\n")
    script.chmod(0o755)
    assert install.hidden_paths([str(script)]) == [str(script), "/root/venv/bin/python"]
    assert install.hidden_paths(["/usr/bin/python3", "-m", "clawsvc"]) == []


def test_clawsvc_command_prefers_the_running_script(tmp_path, monkeypatch):
    script = tmp_path / "clawsvc"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert install.clawsvc_command(str(script)) == (str(script),)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert install.clawsvc_command("/x/pytest") == (sys.executable, "-m", "clawsvc")


def test_cli_main_dry_run_in_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(install.INSTALL_ROOT_ENV, str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert cli.main(["install", "--user", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"# ---- {tmp_path}{tmp_path}/home/.config/systemd/user/clawsvc.service" in out
    assert files_below(tmp_path) == []
