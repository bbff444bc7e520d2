"""install_agents: the manager commands install and uninstall run for `--user` and `--launchd`, against fake
systemctl / journalctl / loginctl / launchctl on PATH that record their argv (tests/helpers/fake_managers.py)."""

from __future__ import annotations

import io
import os
import plistlib
import pwd
from pathlib import Path

import pytest
from helpers.fake_managers import calls, install_fakes

from clawsvc.commands.install import agents as install_agents

UNIT = "clawsvc.service"
LABEL = "ai.openclaw.clawsvc"
ME = pwd.getpwuid(os.geteuid()).pw_name
DOMAIN = f"gui/{os.getuid()}"


@pytest.fixture
def mgr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "mgr"
    monkeypatch.setenv("PATH", f"{install_fakes(home)}:{os.environ['PATH']}")
    return home


def verbs(home: Path, tool: str = "systemctl") -> list[str]:
    """`tool`'s calls other than the read-only show/print, as one string each."""
    return [" ".join(c[1:]) for c in calls(home) if c[0] == tool and c[1:2] != ["print"]
            and "show" not in c]


def set_unit(home: Path, active: str, enabled: str) -> None:
    (home / "units").mkdir(exist_ok=True)
    (home / "units" / UNIT).write_text(f"{active} {enabled}\n")


def write_plist(tmp_path: Path, log_text: str | None = None) -> Path:
    log = tmp_path / "Logs" / "clawsvc.log"
    if log_text is not None:
        log.parent.mkdir(parents=True)
        log.write_text(log_text)
    plist = tmp_path / f"{LABEL}.plist"
    plist.write_bytes(plistlib.dumps({"Label": LABEL, "ProgramArguments": ["/usr/local/bin/clawsvc", "run"],
                                      "StandardErrorPath": str(log)}))
    return plist


# ---------------------------------------------------------------- systemctl --user

def test_a_new_user_unit_is_reloaded_enabled_started_and_lingering_is_explained(mgr, tmp_path):
    out = io.StringIO()
    assert install_agents.activate_user(tmp_path / UNIT, UNIT, out, changed=True) == 0
    assert verbs(mgr) == ["--user --no-pager daemon-reload", f"--user --no-pager enable --now {UNIT}"]
    assert ["loginctl", "show-user", ME, "--property=Linger"] in calls(mgr)
    text = out.getvalue()
    assert f"enabled  {UNIT} (systemctl --user; active)" in text
    assert f"loginctl enable-linger {ME}" in text


def test_an_unchanged_running_unit_is_neither_reloaded_nor_restarted(mgr, tmp_path):
    set_unit(mgr, "active", "enabled")
    (mgr / "linger").write_text("yes")
    out = io.StringIO()
    assert install_agents.activate_user(tmp_path / UNIT, UNIT, out, changed=False) == 0
    assert verbs(mgr) == [f"--user --no-pager enable --now {UNIT}"]
    assert "enable-linger" not in out.getvalue()


def test_a_changed_unit_that_was_running_is_restarted(mgr, tmp_path):
    set_unit(mgr, "active", "enabled")
    out = io.StringIO()
    assert install_agents.activate_user(tmp_path / UNIT, UNIT, out, changed=True) == 0
    assert verbs(mgr) == ["--user --no-pager daemon-reload", f"--user --no-pager enable --now {UNIT}",
                          f"--user --no-pager restart {UNIT}"]
    assert f"restarted {UNIT}" in out.getvalue()


def test_a_failed_start_exits_1_with_the_error_and_the_journal_tail(mgr, tmp_path):
    (mgr / "fail-start").touch()
    out = io.StringIO()
    assert install_agents.activate_user(tmp_path / UNIT, UNIT, out, changed=True) == 1
    text = out.getvalue()
    assert f"clawsvc: {UNIT} did not start:" in text and "control process exited with error code" in text
    assert f"gateway for {UNIT} exited 78" in text, "the journal tail is shown"
    assert ["journalctl", "--user", "--no-pager", "-u", UNIT, "-n", "30", "-o", "short-precise"] in calls(mgr)


def test_deactivate_user_disables_and_stops_an_enabled_unit(mgr):
    set_unit(mgr, "active", "enabled")
    out = io.StringIO()
    assert install_agents.deactivate_user(UNIT, out) is True
    assert verbs(mgr) == [f"--user --no-pager disable --now {UNIT}"]
    assert (mgr / "units" / UNIT).read_text().split() == ["inactive", "disabled"]
    assert f"stopped  {UNIT} (disabled)" in out.getvalue()


def test_deactivate_leaves_a_unit_the_manager_does_not_know_alone(mgr):
    out = io.StringIO()
    assert install_agents.deactivate_systemd(False, UNIT, out) is False
    assert verbs(mgr) == []
    assert out.getvalue() == ""


# ---------------------------------------------------------------- launchd

def test_a_new_agent_is_bootstrapped_and_confirmed_running(mgr, tmp_path):
    plist = write_plist(tmp_path)
    out = io.StringIO()
    assert install_agents.activate_launchd(plist, LABEL, out, changed=True) == 0
    assert verbs(mgr, "launchctl") == [f"bootstrap {DOMAIN} {plist}"]
    assert ["launchctl", "print", f"{DOMAIN}/{LABEL}"] in calls(mgr)
    assert f"loaded   {DOMAIN}/{LABEL} (running)" in out.getvalue()


def test_a_loaded_unchanged_agent_is_left_alone(mgr, tmp_path):
    plist = write_plist(tmp_path)
    (mgr / "agents").mkdir()
    (mgr / "agents" / LABEL).write_text("running")
    out = io.StringIO()
    assert install_agents.activate_launchd(plist, LABEL, out, changed=False) == 0
    assert verbs(mgr, "launchctl") == []
    assert "plist unchanged" in out.getvalue()


def test_a_loaded_changed_agent_is_booted_out_then_bootstrapped(mgr, tmp_path):
    plist = write_plist(tmp_path)
    (mgr / "agents").mkdir()
    (mgr / "agents" / LABEL).write_text("running")
    assert install_agents.activate_launchd(plist, LABEL, io.StringIO(), changed=True) == 0
    assert verbs(mgr, "launchctl") == [f"bootout {DOMAIN}/{LABEL}", f"bootstrap {DOMAIN} {plist}"]


def test_an_agent_that_does_not_run_fails_with_its_log_tail(mgr, tmp_path, monkeypatch):
    monkeypatch.setattr(install_agents, "LAUNCHD_START_WAIT", 1.0)
    plist = write_plist(tmp_path, log_text="clawsvc: /etc/x.yaml:3: gateway.port: not a port\n")
    (mgr / "agent-start").write_text("waiting")
    out = io.StringIO()
    assert install_agents.activate_launchd(plist, LABEL, out, changed=True) == 1
    text = out.getvalue()
    assert f"clawsvc: {DOMAIN}/{LABEL} is waiting after launchctl bootstrap" in text
    assert "gateway.port: not a port" in text


def test_deactivate_launchd_boots_out_a_loaded_agent_and_only_then(mgr):
    (mgr / "agents").mkdir()
    (mgr / "agents" / LABEL).write_text("running")
    assert install_agents.deactivate_launchd(LABEL, io.StringIO()) is True
    assert install_agents.deactivate_launchd(LABEL, io.StringIO()) is False
    assert verbs(mgr, "launchctl") == [f"bootout {DOMAIN}/{LABEL}"]
