"""`clawsvc uninstall` on a tree laid out like `clawsvc install` leaves it, below CLAWSVC_INSTALL_ROOT (files only),
and with fake systemctl / launchctl on PATH for the manager calls (tests/helpers/fake_managers.py)."""

from __future__ import annotations

import io
import os
import plistlib
from pathlib import Path

import pytest
from helpers.fake_managers import calls, install_fakes

from clawsvc import cli
from clawsvc.commands.install import plan as install
from clawsvc.commands.install import uninstall

REPO = Path(__file__).resolve().parent.parent
UNITS = Path("etc/systemd/system")
CREDS = Path("etc/credstore.encrypted/clawsvc")


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    top = tmp_path / "root"
    top.mkdir()
    monkeypatch.setenv("CLAWSVC_INSTALL_ROOT", str(top))
    monkeypatch.setenv("HOME", str(tmp_path / "root" / "home" / "me"))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "CLAWSVC_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return top


@pytest.fixture
def mgr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "mgr"
    monkeypatch.setenv("PATH", f"{install_fakes(home)}:{os.environ['PATH']}")
    return home


def put(root: Path, relpath: str | Path, text: str = "x\n") -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def enable(root: Path, unit: str) -> Path:
    link = root / UNITS / "multi-user.target.wants" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"/etc/systemd/system/{unit.split('@')[0] + '@.service' if '@' in unit else unit}")
    return link


def system_tree(root: Path) -> None:
    """What `install --system` and `keys set` leave: units, enablement, drop-ins, a credential, config, state."""
    put(root, UNITS / "clawsvc.service", (REPO / "units/clawsvc.service").read_text())
    put(root, UNITS / "clawsvc@.service", (REPO / "units/clawsvc@.service").read_text())
    put(root, UNITS / "clawsvc-alert@.service", (REPO / "units/clawsvc-alert@.service").read_text())
    enable(root, "clawsvc.service")
    put(root, UNITS / "clawsvc.service.d/10-clawsvc-reach.conf", "[Service]\nProtectHome=tmpfs\n")
    put(root, UNITS / "clawsvc.service.d/50-clawsvc-credentials.conf",
        "[Service]\nLoadCredentialEncrypted=gateway-token:/etc/credstore.encrypted/clawsvc/clawsvc/gateway-token\n")
    put(root, CREDS / "clawsvc/gateway-token", "ciphertext")
    put(root, "etc/sysusers.d/clawsvc.conf", (REPO / "units/clawsvc.sysusers.conf").read_text())
    put(root, "etc/clawsvc/clawsvc.yaml", "gateway:\n  port: 18789\n")
    put(root, "var/lib/clawsvc/openclaw/state.db")
    put(root, "var/cache/clawsvc/node-compile-cache/blob")
    put(root, "opt/clawsvc/gateway/current/node")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["uninstall", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_system_uninstall_removes_units_dropins_and_credentials_and_keeps_config_state_and_user(root, capsys):
    system_tree(root)
    put(root, UNITS / "clawsvc.service.d/override.conf", "[Service]\nNice=5\n")  # the admin's, not clawsvc's
    code, out, err = run_cli(capsys, "--system")
    assert (code, err) == (0, "")
    for gone in (UNITS / "clawsvc.service", UNITS / "clawsvc@.service", UNITS / "clawsvc-alert@.service",
                 UNITS / "multi-user.target.wants/clawsvc.service",
                 UNITS / "clawsvc.service.d/10-clawsvc-reach.conf", CREDS / "clawsvc",
                 UNITS / "clawsvc.service.d/50-clawsvc-credentials.conf"):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    for kept in (UNITS / "clawsvc.service.d/override.conf", "etc/clawsvc/clawsvc.yaml",
                 "var/lib/clawsvc/openclaw/state.db", "etc/sysusers.d/clawsvc.conf", "opt/clawsvc/gateway/current"):
        assert (root / kept).exists(), kept
    assert f"removed  {root / UNITS / 'clawsvc.service'}\n" in out
    assert f"removed  {root / CREDS / 'clawsvc/gateway-token'} (encrypted credential)" in out
    assert f"kept     {root / UNITS / 'clawsvc.service.d'} (holds drop-ins clawsvc did not write: override.conf)" in out
    assert f"kept     {root / 'etc/clawsvc/clawsvc.yaml'} (--purge removes it)" in out
    assert f"kept     {root / 'var/lib/clawsvc'} (--purge removes it)" in out


def test_a_second_uninstall_says_nothing_to_remove_then_purge_removes_config_and_state(root, capsys):
    system_tree(root)
    assert run_cli(capsys, "--system")[0] == 0
    code, out, err = run_cli(capsys, "--system")
    assert (code, err) == (0, "")
    assert out == (f"nothing to remove: clawsvc.service is not installed (kept {root / 'etc/clawsvc/clawsvc.yaml'}, "
                   f"{root / 'var/lib/clawsvc'}; --purge removes them)\n")
    code, out, err = run_cli(capsys, "--system", "--purge")
    assert (code, err) == (0, "")
    for gone in ("etc/clawsvc", "var/lib/clawsvc", "var/cache/clawsvc", "etc/sysusers.d/clawsvc.conf"):
        assert not (root / gone).exists(), gone
    assert (root / "opt/clawsvc/gateway/current/node").exists(), "the shared gateway runtime stays"
    assert f"rm -rf {root / 'opt/clawsvc/gateway'}" in out
    code, out, _ = run_cli(capsys, "--system", "--purge")
    assert (code, out) == (0, "nothing to remove: clawsvc.service is not installed\n")


def test_purge_in_one_go_also_removes_a_config_written_beside_the_admins_as_new(root, capsys):
    system_tree(root)
    put(root, "etc/clawsvc/clawsvc.yaml.new")
    code, out, _ = run_cli(capsys, "--system", "--purge")
    assert code == 0
    assert not (root / "etc/clawsvc").exists()
    assert not (root / UNITS / "clawsvc.service").exists()
    assert f"removed  {root / 'var/cache/clawsvc'} (cache)" in out


def instance_tree(root: Path, *names: str) -> None:
    """What `install --system --instance NAME` leaves: it writes the main unit too, without enabling it."""
    if not (root / UNITS / "clawsvc.service").exists():
        put(root, UNITS / "clawsvc.service", (REPO / "units/clawsvc.service").read_text())
    put(root, UNITS / "clawsvc@.service", (REPO / "units/clawsvc@.service").read_text())
    put(root, UNITS / "clawsvc-alert@.service", (REPO / "units/clawsvc-alert@.service").read_text())
    put(root, "etc/sysusers.d/clawsvc.conf")
    for name in names:
        enable(root, f"clawsvc@{name}.service")
        put(root, f"etc/clawsvc/{name}.yaml")
        put(root, f"var/lib/clawsvc/{name}/openclaw/state.db")
        put(root, CREDS / f"clawsvc@{name}/gateway-token", "ciphertext")


def test_an_instance_goes_alone_and_the_template_stays_while_another_instance_uses_it(root, capsys):
    instance_tree(root, "alpha", "beta")
    code, out, err = run_cli(capsys, "--instance", "alpha", "--purge")
    assert (code, err) == (0, "")
    assert not (root / UNITS / "multi-user.target.wants/clawsvc@alpha.service").is_symlink()
    assert not (root / CREDS / "clawsvc@alpha").exists()
    assert not (root / "etc/clawsvc/alpha.yaml").exists() and not (root / "var/lib/clawsvc/alpha").exists()
    for kept in (UNITS / "clawsvc@.service", UNITS / "clawsvc.service", UNITS / "clawsvc-alert@.service",
                 CREDS / "clawsvc@beta/gateway-token",
                 "etc/clawsvc/beta.yaml",
                 "var/lib/clawsvc/beta/openclaw/state.db", "etc/sysusers.d/clawsvc.conf"):
        assert (root / kept).exists(), kept
    assert (f"kept     {root / UNITS / 'clawsvc@.service'} (instances beta still use it; it goes with the last one)"
            in out)
    assert "kept     user clawsvc (still used by beta)" in out

    code, out, _ = run_cli(capsys, "--instance", "beta", "--purge")
    assert code == 0
    assert not (root / UNITS / "clawsvc@.service").exists()
    assert not (root / UNITS / "clawsvc.service").exists(), "the last instance takes the unused main unit with it"
    assert not (root / UNITS / "clawsvc-alert@.service").exists(), "and the alert unit they shared"
    assert not (root / "etc/sysusers.d/clawsvc.conf").exists()
    assert not (root / "var/lib/clawsvc/beta").exists()


def test_the_last_instance_leaves_a_main_unit_that_is_set_up_and_its_user_alone(root, capsys):
    system_tree(root)
    instance_tree(root, "alpha")
    code, out, _ = run_cli(capsys, "--instance", "alpha", "--purge")
    assert code == 0
    assert not (root / "etc/clawsvc/alpha.yaml").exists()
    assert (root / UNITS / "clawsvc.service").exists() and (root / "etc/sysusers.d/clawsvc.conf").exists()
    assert (root / UNITS / "clawsvc-alert@.service").exists(), "the main unit's OnFailure= still needs it"
    assert "kept     user clawsvc (still used by clawsvc.service)" in out


def test_purging_the_main_unit_keeps_the_state_root_the_instances_live_in(root, capsys):
    system_tree(root)
    instance_tree(root, "alpha")
    code, out, _ = run_cli(capsys, "--system", "--purge")
    assert code == 0
    assert not (root / "etc/clawsvc/clawsvc.yaml").exists()
    assert (root / "var/lib/clawsvc/alpha/openclaw/state.db").exists()
    assert (root / "var/lib/clawsvc/openclaw/state.db").exists()
    assert f"kept     {root / 'var/lib/clawsvc'} (instances alpha keep their state below it)" in out
    assert (root / UNITS / "clawsvc@.service").exists() and (root / UNITS / "clawsvc-alert@.service").exists()


def test_instance_is_for_the_system_kind_only(root, capsys):
    code, out, err = run_cli(capsys, "--user", "--instance", "alpha")
    assert (code, out) == (2, "")
    assert err == "clawsvc: uninstall: --instance works with --system only (not --user)\n"


def test_a_bad_instance_name_is_one_line_not_a_traceback(root, capsys):
    code, _, err = run_cli(capsys, "--instance", "../etc")
    assert code == 2
    assert err.count("\n") == 1 and "instance name" in err


@pytest.mark.parametrize("name", ["openclaw", "clawsvc", "node-compile-cache"])
def test_an_instance_named_after_the_main_units_own_files_is_refused_and_they_stay(root, capsys, name):
    # clawsvc@openclaw's state dir would be /var/lib/clawsvc/openclaw: the main unit's gateway state, which
    # --purge removed; clawsvc@clawsvc's config is the main unit's
    system_tree(root)
    code, _, err = run_cli(capsys, "--instance", name, "--purge")
    assert code == 2
    assert err.count("\n") == 1 and f"instance name {name!r} is taken by the main clawsvc.service's own files" in err
    assert (root / "var/lib/clawsvc/openclaw/state.db").exists() and (root / "etc/clawsvc/clawsvc.yaml").exists()


def test_with_the_manager_the_unit_is_disabled_and_stopped_before_its_files_go_then_reloaded(root, mgr):
    system_tree(root)
    (mgr / "units").mkdir()
    (mgr / "units" / "clawsvc.service").write_text("active enabled\n")
    out = io.StringIO()
    tgt = uninstall.target("system", None, None, root)
    assert uninstall.uninstall(tgt, False, uninstall.Run(root, out, manage=True)) == 0
    changes = [c[2:] for c in calls(mgr) if c[0] == "systemctl" and c[2] != "show"]
    assert changes == [["disable", "--now", "clawsvc.service"], ["daemon-reload"]]
    assert out.getvalue().startswith("stopped  clawsvc.service (disabled)\n")
    assert not (root / UNITS / "clawsvc.service").exists()

    again = io.StringIO()
    assert uninstall.uninstall(tgt, False, uninstall.Run(root, again, manage=True)) == 0
    assert [c for c in calls(mgr) if "daemon-reload" in c] == [["systemctl", "--no-pager", "daemon-reload"]]
    assert again.getvalue().startswith("nothing to remove: clawsvc.service is not installed")


def test_a_unit_that_cannot_be_asked_to_stop_keeps_its_files(root, tmp_path, monkeypatch, capsys):
    system_tree(root)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no systemctl at all
    tgt = uninstall.target("system", None, None, root)
    assert uninstall.uninstall(tgt, False, uninstall.Run(root, io.StringIO(), manage=True)) == 1
    assert capsys.readouterr().err == "clawsvc: uninstall: systemctl not found on PATH\n"
    assert (root / UNITS / "clawsvc.service").exists()


def test_user_uninstall_with_purge_removes_the_user_unit_config_state_and_cache(root, mgr, capsys):
    home = Path(os.environ["HOME"])
    unit_dir = home / ".config/systemd/user"
    config = home / ".config/clawsvc/clawsvc.yaml"
    shipped = "ExecStart=/usr/local/bin/clawsvc run -c %E/clawsvc/clawsvc.yaml"
    unit = (REPO / "units/user/clawsvc.service").read_text().replace(shipped, f"ExecStart=/x/clawsvc run -c {config}")
    put(root, unit_dir.relative_to("/") / "clawsvc.service", unit)
    put(root, unit_dir.relative_to("/") / "clawsvc-alert@.service",
        (REPO / "units/user/clawsvc-alert@.service").read_text())
    put(root, unit_dir.relative_to("/") / "clawsvc.service.d/10-clawsvc-reach.conf")
    put(root, config.relative_to("/"))
    put(root, (home / ".local/state/clawsvc/openclaw/db").relative_to("/"))
    put(root, (home / ".cache/clawsvc/node-compile-cache/x").relative_to("/"))
    code, _, err = run_cli(capsys, "--user", "--purge")
    assert (code, err) == (0, "")
    for gone in (unit_dir / "clawsvc.service", unit_dir / "clawsvc-alert@.service", unit_dir / "clawsvc.service.d",
                 config,
                 home / ".local/state/clawsvc", home / ".cache/clawsvc"):
        assert not (root / gone.relative_to("/")).exists(), gone
    assert calls(mgr) == [], "an install root is files only: no manager is asked"


def test_launchd_uninstall_boots_the_agent_out_and_removes_the_plist(root, mgr):
    home = Path(os.environ["HOME"])
    plist = root / (home / "Library/LaunchAgents/ai.openclaw.clawsvc.plist").relative_to("/")
    config = home / "etc/my.yaml"
    plist.parent.mkdir(parents=True)
    plist.write_bytes(plistlib.dumps({"Label": "ai.openclaw.clawsvc",
                                      "ProgramArguments": ["/usr/bin/clawsvc", "run", "-c", str(config)]}))
    put(root, config.relative_to("/"))
    (mgr / "agents").mkdir()
    (mgr / "agents" / "ai.openclaw.clawsvc").write_text("running")
    out = io.StringIO()
    tgt = uninstall.target("launchd", None, None, root)
    assert tgt.config == config, "the config is the one the installed plist runs with"
    assert uninstall.uninstall(tgt, True, uninstall.Run(root, out, manage=True)) == 0
    assert [c[:2] for c in calls(mgr) if c[1] != "print"] == [["launchctl", "bootout"]]
    assert not plist.exists() and not (root / config.relative_to("/")).exists()
    assert f"stopped  gui/{os.getuid()}/ai.openclaw.clawsvc (launchctl bootout)" in out.getvalue()


def test_nothing_installed_for_the_user_needs_no_user_manager(root, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no systemctl, no launchctl: never asked
    for kind in ("user", "launchd"):
        out = io.StringIO()
        tgt = uninstall.target(kind, None, None, root)
        assert uninstall.uninstall(tgt, True, uninstall.Run(root, out, manage=True)) == 0
        assert out.getvalue() == f"nothing to remove: {tgt.unit} is not installed\n"


# ---------------------------------------------------------------- destructive paths: never through a planted link

def victim(tmp_path: Path) -> Path:
    """What a planted symlink points at: must survive every uninstall."""
    precious = tmp_path / "victim" / "precious"
    precious.parent.mkdir()
    precious.write_text("keep me\n")
    return precious


@pytest.mark.parametrize("planted", ["var/lib/clawsvc/alpha", "var/cache/clawsvc/alpha"])
def test_purge_refuses_a_symlink_planted_as_an_instance_data_dir(root, tmp_path, capsys, planted):
    instance_tree(root, "alpha")
    precious = victim(tmp_path)
    link = root / planted
    if link.exists():
        for child in sorted(link.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        link.rmdir()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(precious.parent)  # the service user owns /var/lib/clawsvc: it can plant this
    code, _, err = run_cli(capsys, "--instance", "alpha", "--purge")
    assert code == 1
    assert err == (f"clawsvc: uninstall: not removing {link}: it is a symbolic link (to {precious.parent}); remove "
                   "the link, check who planted it and where it points, then rerun\n")
    assert precious.read_text() == "keep me\n" and link.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root (chown)")
def test_purge_of_a_data_dir_below_a_directory_another_user_owns_is_refused(root, tmp_path, monkeypatch, capsys):
    other = tmp_path / "other"  # XDG_STATE_HOME in a directory uid 65534 could swap for a symlink meanwhile
    put(root, (other / "clawsvc/openclaw/db").relative_to("/"))
    os.chown(root / other.relative_to("/"), 65534, 65534)
    monkeypatch.setenv("XDG_STATE_HOME", str(other))
    home = Path(os.environ["HOME"])
    put(root, (home / ".config/systemd/user/clawsvc.service").relative_to("/"),
        (REPO / "units/user/clawsvc.service").read_text())
    code, _, err = run_cli(capsys, "--user", "--purge")
    assert code == 1 and err.count("\n") == 1
    assert f"not removing {root / other.relative_to('/') / 'clawsvc'}: " in err and "owned by" in err
    assert (root / (other / "clawsvc/openclaw/db").relative_to("/")).exists()


def test_a_symlink_inside_the_state_dir_is_removed_not_followed(root, tmp_path, capsys):
    instance_tree(root, "alpha")
    precious = victim(tmp_path)
    (root / "var/lib/clawsvc/alpha/openclaw/escape").symlink_to(precious.parent)
    code, _, err = run_cli(capsys, "--instance", "alpha", "--purge")
    assert (code, err) == (0, "")
    assert not (root / "var/lib/clawsvc/alpha").exists()
    assert precious.read_text() == "keep me\n"


def test_only_the_dropins_clawsvc_writes_are_removed(root, capsys):
    system_tree(root)
    admins = put(root, UNITS / "clawsvc.service.d/20-clawsvc-limits.conf", "[Service]\nMemoryMax=2G\n")
    code, out, _ = run_cli(capsys, "--system")
    assert code == 0 and admins.exists()
    assert not (root / UNITS / "clawsvc.service.d/10-clawsvc-reach.conf").exists()
    assert "holds drop-ins clawsvc did not write: 20-clawsvc-limits.conf" in out


@pytest.mark.parametrize("ours", [True, False])
def test_the_link_install_put_on_path_goes_with_the_last_unit_only_when_it_is_ours(root, capsys, tmp_path, ours,
                                                                               monkeypatch):
    system_tree(root)
    this = tmp_path / "venv/bin/clawsvc"
    other = put(tmp_path, "elsewhere/clawsvc")
    put(tmp_path, "venv/bin/clawsvc")
    monkeypatch.setattr(install, "clawsvc_command", lambda argv0=None: (str(this),))
    link = root / "usr/local/bin/clawsvc"
    link.parent.mkdir(parents=True)
    link.symlink_to(this if ours else other)
    assert run_cli(capsys, "--system")[0] == 0
    assert link.is_symlink() is not ours, "only a link to this very clawsvc is removed"
