"""The start plan (clawsvc/service/startplan.py, earlyspawn.py) against what another local uid, odd input or a
signal at the wrong moment could make of the early gateway: each test states the rule it holds."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from double import pid_alive
from startplan_kit import CLI, PlanFiles, early, own_cache
from waiting import poll

from clawsvc import trust
from clawsvc.gateway.spawnenv import inherited
from clawsvc.service import startplan

NOBODY = 65534
TOKEN = "review-token-value"
RECORDER = """#!/bin/sh
echo $$ > "$RECORD.pid.tmp" && mv "$RECORD.pid.tmp" "$RECORD.pid"
grep '^SigIgn:' /proc/$$/status > "$RECORD.sigign"
ls /proc/$$/fd > "$RECORD.fds"
env > "$RECORD.env"
{extra}
exec sleep 60
"""


def script(path: Path, extra: str = "") -> Path:
    path.write_text(RECORDER.format(extra=extra))
    path.chmod(0o755)
    return path



class Plan(PlanFiles):
    """PlanFiles under tmp_path, which others may pass through (0755), as /opt or /etc."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, TOKEN, 0o755)

    def save(self, launch: list[str], cli: list[str] = CLI) -> str:
        env = {**inherited(os.environ), "RECORD": str(self.record), "OPENCLAW_GATEWAY_TOKEN": TOKEN,
               startplan.GATEWAY_ID_ENV: "0" * 32}
        files = [str(self.config), *(word for word in launch if os.path.isabs(word) and os.path.isfile(word))]
        return startplan.save(cli, launch, env, str(self.state), self.port,
                              {"OPENCLAW_GATEWAY_TOKEN": str(self.token)}, files, [str(self.state)])


@pytest.fixture
def plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plan]:
    made = Plan(tmp_path)
    assert own_cache(monkeypatch, tmp_path) == made.cache
    yield made
    pidfile = Path(f"{made.record}.pid")
    if pidfile.exists():  # whatever a failing test left running
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


# ---------------------------------------------------------------- 1. exec'ing or feeding something of theirs

def test_trusted_checks_every_symlink_followed_like_the_trust_module(tmp_path: Path) -> None:
    """ours/entry -> theirs/hop -> ours/program: whoever owns `theirs` can repoint `hop`. trust.check_file (what
    the config path runs) refuses it; the plan's trusted() only looks at the first and the last directory."""
    tmp_path.chmod(0o755)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    program = script(ours / "program")
    (theirs / "hop").symlink_to(program)
    (ours / "entry").symlink_to(theirs / "hop")
    os.chown(theirs, NOBODY, NOBODY)
    assert startplan.trusted(str(program))
    with pytest.raises(trust.TrustError, match="theirs"):
        trust.check_file(ours / "entry", "gateway.command")
    assert not startplan.trusted(str(ours / "entry"))


def test_a_program_reached_through_another_users_directory_never_gets_the_token(
        plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan was written while every hop was root's; later a hop's directory belongs to someone else (as in
    test_startplan's "program's directory owned by another uid"). Between the checks and the exec they repoint
    their link: the token must not reach their program."""
    ours, theirs = plan.root / "ours", plan.root / "theirs"
    ours.mkdir()
    theirs.mkdir()
    program = script(ours / "gateway")
    (theirs / "hop").symlink_to(program)
    (ours / "entry").symlink_to(theirs / "hop")
    plan.save([str(ours / "entry"), "gateway", "run"])
    os.chown(theirs, NOBODY, NOBODY)
    stranger_record = plan.root / "stranger"
    stranger = theirs / "stranger.sh"
    stranger.write_text(f"#!/bin/sh\nenv > {stranger_record}.tmp && mv {stranger_record}.tmp {stranger_record}\n"
                        "exec sleep 60\n")
    stranger.chmod(0o755)
    os.chown(stranger, NOBODY, NOBODY)
    real_port_check = startplan.port_in_use

    def their_race(port: int) -> bool:  # what they do while begin() is past its checks: repoint their link
        (theirs / "hop.new").symlink_to(stranger)
        os.rename(theirs / "hop.new", theirs / "hop")
        return real_port_check(port)

    monkeypatch.setattr(startplan, "port_in_use", their_race)
    with early() as gateway:
        poll(lambda: isinstance(gateway, str) or stranger_record.exists() or Path(f"{plan.record}.env").exists(),
             30, "begin() to refuse, or whichever program it exec'd to start")
        assert not stranger_record.exists(), "the stranger's program was exec'd with the gateway's environment"
        assert isinstance(gateway, str)


# ---------------------------------------------------------------- 2. secrets written down

def test_the_plan_file_holds_no_credential_from_the_environment(plan: Plan,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's key records clawsvc's whole environment, values included, unless a name looks secret: a proxy
    or database URL with a password in it ends up on disk. The key needs a digest of it, not its values."""
    monkeypatch.setenv("HTTPS_PROXY", "http://svc:proxy-pass-1234@proxy.example:3128")
    monkeypatch.setenv("DATABASE_URL", "postgres://svc:db-pass-5678@db.example/openclaw")
    path = plan.save([str(script(plan.root / "gateway"))])
    written = Path(path).read_bytes()
    assert [word for word in (b"proxy-pass-1234", b"db-pass-5678") if word in written] == []


# ---------------------------------------------------------------- 4. the early gateway is not what Popen makes

def _sigign(pid_record: str) -> int:
    return int(pid_record.split()[1], 16)


def test_the_early_gateway_starts_with_the_signal_dispositions_popen_gives(plan: Plan) -> None:
    """Python ignores SIGPIPE and SIGXFSZ; Popen (restore_signals) resets them for the gateway, the plan's fork
    does not: an adopted gateway would differ from the config's although `differences` says they are the same."""
    program = script(plan.root / "gateway")
    plan.save([str(program)])
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway), gateway
        early_ignored = _sigign(plan.recorded("sigign"))
    popen_record = plan.root / "popen"
    child = subprocess.Popen([str(program)], env={**os.environ, "RECORD": str(popen_record)}, cwd=plan.state,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        path = Path(f"{popen_record}.sigign")
        poll(lambda: path.exists() and path.read_text().endswith("\n"), 30, "the Popen'd gateway's SigIgn")
        popen_ignored = _sigign(path.read_text())
    finally:
        child.kill()
        child.wait()
    assert popen_ignored & (1 << (signal.SIGPIPE - 1)) == 0
    assert early_ignored == popen_ignored, f"SigIgn {early_ignored:#x} (early) != {popen_ignored:#x} (Popen)"


HIGH_FD = 1100


@pytest.fixture
def high_fd() -> Iterator[int]:
    """An inheritable descriptor far above the pipes (the child once closed only up to a fixed bound)."""
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > HIGH_FD
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(fd, HIGH_FD, inheritable=True)
        yield HIGH_FD
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.close(HIGH_FD)


def test_no_inherited_descriptor_reaches_the_early_gateway(plan: Plan, high_fd: int) -> None:
    """Popen's close_fds closes every descriptor above 2; so does the plan's child (up to SC_OPEN_MAX)."""
    plan.save([str(script(plan.root / "gateway"))])
    with early() as gateway:
        assert isinstance(gateway, startplan.EarlyGateway), gateway
        fds = {int(name) for name in plan.recorded("fds").split()}
    assert high_fd not in fds


# ---------------------------------------------------------------- 3. nothing outlives clawsvc

@pytest.mark.parametrize("pdeathsig", [True, False], ids=["setpriv-in-argv", "no-setpriv"])
def test_sigterm_before_run_handles_signals_leaves_no_early_gateway(plan: Plan, pdeathsig: bool) -> None:
    """SIGTERM (default action: die, no `finally`) while clawsvc still reads its config. With setpriv
    --pdeathsig in the plan's argv the kernel kills the early gateway (the main thread forked it, and lives as long
    as the process); without setpriv (_pdeathsig_prefix() is [] where util-linux lacks it) the plan's own handler
    (earlyspawn._guard) kills it before clawsvc dies of the signal."""
    setpriv = shutil.which("setpriv")
    if pdeathsig and setpriv is None:
        pytest.skip("setpriv is not installed")
    program = script(plan.root / "gateway", extra='kill -TERM "$PPID"')  # the signal lands in the window
    launch = [setpriv, "--pdeathsig", "KILL", "--", str(program)] if pdeathsig and setpriv else [str(program)]
    plan.save(launch, cli=["run", "-c", str(plan.config)])
    clawsvc = subprocess.Popen([sys.executable, "-m", "clawsvc", "run", "-c", str(plan.config)], env=dict(os.environ),
                               cwd=plan.root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        assert clawsvc.wait(timeout=60) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        if clawsvc.poll() is None:
            clawsvc.kill()
            clawsvc.wait()
    gateway = int(plan.recorded("pid"))
    poll(lambda: not pid_alive(gateway), 10, f"the early gateway (pid {gateway}) to die with its clawsvc")


# ---------------------------------------------------------------- 5. input and concurrency

def test_a_temp_file_left_by_a_killed_writer_does_not_stop_plans(plan: Plan) -> None:
    """A writer killed between creating its temp file and the rename leaves start-plan.PID.tmp; the next clawsvc
    with that pid (a container, a fresh boot) must still write its plan."""
    plan.cache.mkdir(mode=0o700)
    (plan.cache / f"{startplan.FILE}.{os.getpid()}.tmp").write_bytes(b"half a plan")
    path = plan.save([str(script(plan.root / "gateway"))])
    assert startplan._load(path)


@pytest.mark.parametrize("field,value", [("argv", "not-a-list"), ("argv", None), ("port", "8080"),
                                         ("port", 70000), ("secrets", ["OPENCLAW_GATEWAY_TOKEN"]),
                                         ("cwd", "/nonexistent/state"), ("env", {"A": 1}), ("unset", None)])
def test_a_plan_entry_of_the_wrong_shape_means_no_early_gateway(plan: Plan, field: str, value: object) -> None:
    import marshal

    path = Path(plan.save([str(script(plan.root / "gateway"))]))
    plans = marshal.loads(path.read_bytes())
    for entry in plans.values():
        entry[field] = value
    path.write_bytes(marshal.dumps(plans))
    before = {pid for pid in os.listdir("/proc") if pid.isdigit()}
    with early() as gateway:
        assert isinstance(gateway, str)
    assert not Path(f"{plan.record}.pid").exists()
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and pid not in before
                and _parent(int(pid)) == os.getpid() and pid_alive(int(pid))]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError):
        return None


def test_a_closed_stdin_means_no_early_gateway(plan: Plan) -> None:
    """With fd 0 closed the pipes would take its number and the child's dup2s would mix them up (Popen copes)."""
    plan.save([str(script(plan.root / "gateway"))])
    code = "from clawsvc.service import startplan; print(startplan.begin(['run', '-c', 'clawsvc.yaml']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=plan.root,
                            env=dict(os.environ), preexec_fn=lambda: os.close(0))
    assert result.stdout.strip() == "clawsvc's stdin, stdout or stderr is closed", result.stderr
    assert not Path(f"{plan.record}.pid").exists()
