"""GatewayProcess against real children: a small fake gateway, the double, and the real gateway."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
from double import double_command, free_port, pid_alive
from realgw import connect, gateway_env
from waiting import poll

from clawsvc.config import Config, GatewayConfig, LoggingConfig
from clawsvc.config.values import TOKEN_ENV
from clawsvc.gateway import leftovers, proctree
from clawsvc.gateway.output import MAX_LINE, TRUNCATED, OutputPump, clean, line_level
from clawsvc.gateway.process import ExitInfo, GatewayProcess, SpawnError, build_argv, build_env, check_command
from clawsvc.logs import redact, register_secret, secret_safe_cut

HELPERS = Path(__file__).parent / "helpers"
FAKE = (sys.executable, str(HELPERS / "fake_gateway.py"))
TOKEN = "tok-" + "Zq9" * 12


def make_config(tmp_path: Path, command: tuple[str, ...] = FAKE, env: dict[str, str] | None = None,
                stop_timeout: float = 5.0, port: int = 18789, **logging: object) -> Config:
    gateway = GatewayConfig(command=command, port=port, state_dir=tmp_path / "state",
                            compile_cache=tmp_path / "compile-cache", env=MappingProxyType(env or {}),
                            stop_timeout=stop_timeout)
    return Config(gateway=gateway, logging=LoggingConfig(**logging))  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    poll(predicate, timeout, what, 0.02)


def gateway_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "clawsvc.gateway"]


def logged_pid(caplog: pytest.LogCaptureFixture, label: str) -> int:
    pattern = re.compile(rf"{label} pid (\d+)")
    wait_for(lambda: any(pattern.search(r.getMessage()) for r in gateway_lines(caplog)), what=f"'{label} pid'")
    return next(int(m.group(1)) for r in gateway_lines(caplog) if (m := pattern.search(r.getMessage())))


class Spawned:
    """A GatewayProcess plus every ExitInfo its on_exit received (and `also` called with each)."""

    def __init__(self, config: Config, token: str = TOKEN, provider_env: dict[str, str] | None = None,
                 also: Callable[[ExitInfo], None] | None = None) -> None:
        self.exits: list[ExitInfo] = []
        self.exited = threading.Event()
        self.also = also
        self.process = GatewayProcess(config, token, provider_env or {}, self._on_exit)

    def _on_exit(self, info: ExitInfo) -> None:
        assert threading.current_thread().name == "clawsvc-waiter"
        if self.also is not None:
            self.also(info)
        self.exits.append(info)
        self.exited.set()


@pytest.fixture
def spawn(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Spawned]]:
    caplog.set_level(logging.DEBUG)
    made: list[Spawned] = []

    def factory(config: Config, **kwargs: object) -> Spawned:
        made.append(Spawned(config, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield factory
    for item in made:
        item.process.stop(timeout=2.0)


# ---------------------------------------------------------------- argv and environment

def test_argv_adds_allow_unconfigured_only_without_gateway_config(tmp_path: Path) -> None:
    config = make_config(tmp_path, command=("/opt/node", "/opt/openclaw.mjs"), port=4242)
    assert build_argv(config) == ["/opt/node", "/opt/openclaw.mjs", "gateway", "run", "--port", "4242",
                                  "--bind", "loopback", "--auth", "token", "--allow-unconfigured"]
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "openclaw.json").write_text("{}")
    assert "--allow-unconfigured" not in build_argv(config)


def test_env_strips_service_manager_vars_and_never_lets_config_replace_the_token(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1",
            "LISTEN_FDS": "1", "LISTEN_PID": "1", "LISTEN_FDNAMES": "x", "INVOCATION_ID": "i",
            "JOURNAL_STREAM": "8:9", "NODE_OPTIONS": "--inspect", "SYSTEMD_EXEC_PID": "1",
            TOKEN_ENV: "inherited-token", "KEEP_ME": "yes"}
    config = make_config(tmp_path, env={TOKEN_ENV: "from-config", "EXTRA": "1", "NO_COLOR": "0"})
    env = build_env(config, TOKEN, {"ANTHROPIC_API_KEY": "sk-a"}, base=base)
    assert not set(env) & {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                           "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM", "NODE_OPTIONS", "SYSTEMD_EXEC_PID"}
    state = tmp_path / "state"
    assert env[TOKEN_ENV] == TOKEN
    assert env["OPENCLAW_STATE_DIR"] == str(state)
    assert env["OPENCLAW_CONFIG_PATH"] == str(state / "openclaw.json")
    assert env["OPENCLAW_NO_RESPAWN"] == "1"
    assert env["OPENCLAW_SUPERVISOR_MODE"] == env["OPENCLAW_SERVICE_REPAIR_POLICY"] == "external"
    assert env["ANTHROPIC_API_KEY"] == "sk-a"
    assert (env["KEEP_ME"], env["EXTRA"], env["NO_COLOR"]) == ("yes", "1", "0")  # gateway.env is merged last


# ---------------------------------------------------------------- spawn errors

def test_command_not_on_path_names_it_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match=r"'openclaw-nope' not found on PATH.*clawsvc gateway-install"):
        Spawned(make_config(tmp_path, command=("openclaw-nope",))).process.start()


def test_missing_and_non_executable_command(tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match=rf"{tmp_path}/missing/node does not exist.*gateway-install"):
        Spawned(make_config(tmp_path, command=(str(tmp_path / "missing/node"), "x.mjs"))).process.start()
    plain = tmp_path / "openclaw"
    plain.write_text("not a program")
    with pytest.raises(SpawnError, match=rf"{plain} is not an executable file"):
        Spawned(make_config(tmp_path, command=(str(plain),))).process.start()


def _fake_node(directory: Path, version: str) -> Path:
    node = directory / "bin" / "node"
    node.parent.mkdir(parents=True)
    node.write_text(f"#!/bin/sh\necho v{version}\n")
    node.chmod(0o755)
    return node


def _fake_entry(directory: Path) -> Path:
    package = directory / "openclaw"
    package.mkdir()
    (package / "package.json").write_text('{"name": "openclaw", "engines": {"node": ">=24.16.0 <25 || >=26.1.0"}}')
    entry = package / "openclaw.mjs"
    entry.write_text("#!/usr/bin/env node\n")
    entry.chmod(0o755)
    return entry


def test_missing_entry_script(tmp_path: Path) -> None:
    node = _fake_node(tmp_path, "24.21.0")
    with pytest.raises(SpawnError, match=rf"entry script {tmp_path}/nowhere.mjs does not exist.*gateway-install"):
        Spawned(make_config(tmp_path, command=(str(node), str(tmp_path / "nowhere.mjs")))).process.start()


def test_node_too_old_names_node_versions_and_fix(tmp_path: Path) -> None:
    node, entry = _fake_node(tmp_path, "20.20.2"), _fake_entry(tmp_path)
    with pytest.raises(SpawnError) as caught:
        Spawned(make_config(tmp_path, command=(str(node), str(entry)))).process.start()
    message = str(caught.value)
    assert str(node) in message and "too old" in message and "20.20.2" in message and ">=24.16.0" in message
    assert "clawsvc gateway-install" in message and "\n" not in message
    # the npm bin shim (#!/usr/bin/env node) is checked against the node found on PATH
    with pytest.raises(SpawnError, match="too old"):
        check_command([str(entry), "gateway", "run"], {"PATH": str(node.parent)})


def test_good_node_passes_and_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node, entry = _fake_node(tmp_path, "24.21.0"), _fake_entry(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = check_command(["bin/node", "openclaw/openclaw.mjs", "gateway"], {"PATH": "/usr/bin"})
    assert argv == [str(node), str(entry), "gateway"]


# ---------------------------------------------------------------- running

def test_token_only_in_environ_never_in_cmdline_or_logs(tmp_path: Path, spawn, caplog, monkeypatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/clawsvc-test-notify")
    monkeypatch.setenv("LISTEN_FDS", "3")
    item = spawn(make_config(tmp_path, env={"FAKE_PRINT_TOKEN": "1"}), provider_env={"OPENAI_API_KEY": "sk-o"})
    pid = item.process.start()
    wait_for(lambda: any("my token is" in r.getMessage() for r in gateway_lines(caplog)), what="token line")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    environ = dict(var.split(b"=", 1) for var in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if var)
    assert TOKEN.encode() not in cmdline
    assert environ[TOKEN_ENV.encode()] == TOKEN.encode()
    assert environ[b"OPENAI_API_KEY"] == b"sk-o"
    assert b"NOTIFY_SOCKET" not in environ and b"LISTEN_FDS" not in environ
    assert Path(os.readlink(f"/proc/{pid}/cwd")) == tmp_path / "state"
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert TOKEN not in caplog.text
    assert any(r.getMessage() == "my token is ***" for r in gateway_lines(caplog))


def test_exit_reported_once_from_waiter_with_status(tmp_path: Path, spawn) -> None:
    item = spawn(make_config(tmp_path, env={"FAKE_EXIT": "3"}))
    item.process.start()
    assert item.exited.wait(15)
    assert item.exits == [ExitInfo(returncode=3, signal=None)]
    assert item.exits[0].describe() == "exited with status 3"
    assert not item.process.running
    assert item.process.stop() == ExitInfo(3, None)  # after exit: nothing to do, same answer
    assert len(item.exits) == 1


def test_sigterm_ignored_means_sigkill_after_stop_timeout_and_group_gone(tmp_path: Path, spawn, caplog) -> None:
    item = spawn(make_config(tmp_path, env={"FAKE_IGNORE_TERM": "1", "FAKE_GRANDCHILD": "1"}, stop_timeout=1.0))
    pid = item.process.start()
    grandchild = logged_pid(caplog, "grandchild")
    wait_for(lambda: any(r.getMessage() == "ready" for r in gateway_lines(caplog)), what="ready")
    started = time.monotonic()
    info = item.process.stop()
    elapsed = time.monotonic() - started
    assert info == ExitInfo(None, signal.SIGKILL, forced=True)
    assert info.describe().startswith("killed by SIGKILL")
    assert 1.0 <= elapsed < 10.0
    assert not pid_alive(pid) and not pid_alive(grandchild)
    assert item.exits == [info]


def test_stop_is_idempotent_and_safe_from_many_threads(tmp_path: Path, spawn, caplog) -> None:
    item = spawn(make_config(tmp_path))
    item.process.start()
    wait_for(lambda: any(r.getMessage() == "ready" for r in gateway_lines(caplog)), what="ready")
    results: list[ExitInfo] = []
    threads = [threading.Thread(target=lambda: results.append(item.process.stop())) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [ExitInfo(0, None)] * 6
    assert item.exits == [ExitInfo(0, None)]


def _start_unless_cancelled(process: GatewayProcess, pids: list[int]) -> None:
    try:
        pids.append(process.start())
    except SpawnError as exc:
        assert "cancelled" in str(exc)


def test_stop_racing_start_leaves_nothing_running(tmp_path: Path, spawn) -> None:
    for _ in range(5):
        item = spawn(make_config(tmp_path, env={"FAKE_GRANDCHILD": "1"}))
        pids: list[int] = []
        starter = threading.Thread(target=_start_unless_cancelled, args=(item.process, pids))
        starter.start()
        info = item.process.stop(timeout=5.0)
        starter.join(30)
        assert not item.process.running
        # either the stop cancelled the start (no pid, no exit) or it ended that very process
        assert item.exits == [info] * len(pids)
        assert not any(pid_alive(pid) for pid in pids)


def test_stop_before_start_cancels_the_start(tmp_path: Path) -> None:
    item = Spawned(make_config(tmp_path))
    assert item.process.stop() == ExitInfo(None, None)
    with pytest.raises(SpawnError, match="cancelled"):
        item.process.start()
    assert item.process.pid is None


def test_gateway_survives_the_thread_that_started_it(tmp_path: Path, spawn, caplog) -> None:
    # Linux sends the parent-death signal when the *thread* that forked exits: the waiter does the fork.
    item = spawn(make_config(tmp_path))
    starter = threading.Thread(target=item.process.start)
    starter.start()
    starter.join(30)
    wait_for(lambda: any(r.getMessage() == "ready" for r in gateway_lines(caplog)), what="ready")
    pid = item.process.pid
    assert pid is not None
    assert not item.exited.wait(0.5) and pid_alive(pid)


def test_send_signal_reaches_the_main_process(tmp_path: Path, spawn, caplog) -> None:
    item = spawn(make_config(tmp_path))
    item.process.start()
    wait_for(lambda: any(r.getMessage() == "ready" for r in gateway_lines(caplog)), what="ready")
    item.process.send_signal(signal.SIGUSR2)
    wait_for(lambda: any(r.getMessage() == "got SIGUSR2" for r in gateway_lines(caplog)), what="SIGUSR2 line")


def test_helper_in_its_own_session_is_killed_when_it_outlives_the_gateway(tmp_path: Path, spawn, caplog) -> None:
    item = spawn(make_config(tmp_path, env={"FAKE_ESCAPEE": "1"}))
    pid = item.process.start()
    escapee = logged_pid(caplog, "escapee")
    wait_for(lambda: escapee in proctree.descendants(pid), what="escapee to be a descendant")
    assert item.process.stop() == ExitInfo(0, None)
    assert not pid_alive(escapee)
    assert any("helper process" in r.getMessage() and str(escapee) in r.getMessage() for r in caplog.records)


# a gateway (sh exec'ing sleep) whose helper, in a session of its own, ignores SIGTERM and writes its pid
STUBBORN = ("/bin/sh", "-c", """setsid sh -c 'trap "" TERM; echo $$ > "$HELPER_PIDFILE.tmp"; \
mv "$HELPER_PIDFILE.tmp" "$HELPER_PIDFILE"; exec sleep 1000' </dev/null >/dev/null 2>&1 &
exec sleep 1000""")


@pytest.fixture
def subreaper() -> Iterator[None]:
    """This test process adopts what its gateways orphan, as `clawsvc run` does; undone afterwards."""
    assert proctree.become_subreaper()
    yield
    assert ctypes.CDLL(None).prctl(proctree.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) == 0


def _pid_in(path: Path) -> int | None:
    return int(path.read_text()) if path.exists() else None


def test_exit_is_reported_before_stubborn_helpers_are_ended_and_stop_waits_for_them(tmp_path: Path, subreaper,
                                                                                    spawn) -> None:
    pidfile = tmp_path / "helper.pid"
    helper_alive_at_exit: list[bool] = []
    item = spawn(make_config(tmp_path, command=STUBBORN, env={"HELPER_PIDFILE": str(pidfile)}),
                 also=lambda info: helper_alive_at_exit.append(pid_alive(helper)))
    item.process.start()
    helper = poll(lambda: _pid_in(pidfile), 10, "the helper to write its pid")
    assert item.process.stop(timeout=5.0) == ExitInfo(None, signal.SIGTERM)
    assert helper_alive_at_exit == [True], "the exit must be reported before the helpers are ended"
    assert not Path(f"/proc/{helper}").exists(), "stop() returns only once the helper is killed and reaped"
    assert not (tmp_path / "state" / leftovers.PIDFILE).exists()


def test_a_failing_orphan_watch_still_reports_the_exit(tmp_path: Path, spawn, monkeypatch, caplog) -> None:
    def broken(self: proctree.Orphans, gateway_fd: int, interval: float) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(proctree.Orphans, "watch", broken)
    item = spawn(make_config(tmp_path))
    os.kill(item.process.start(), signal.SIGKILL)
    assert item.exited.wait(15), "the waiter died with the watch: the exit was never reported"
    assert item.exits == [ExitInfo(None, signal.SIGKILL)]
    assert not item.process.running
    assert any("watching gateway pid" in r.getMessage() for r in caplog.records)


def test_output_levels_suppression_binary_and_long_lines(tmp_path: Path, spawn, caplog) -> None:
    stdout = r"plain stdout\nERROR broken thing\nnoise: heartbeat\n\xff\xfe\x00bin\n"
    stderr = r'plain stderr\n[gateway] [info] calm\n{"level":"error","msg":"json"}\n'
    env = {"FAKE_STDOUT": stdout, "FAKE_STDERR": stderr, "FAKE_HUGE": str(200 * 1024)}
    config = make_config(tmp_path, env=env, suppress=(re.compile(r"^noise:"),))
    item = spawn(config)
    item.process.start()
    wait_for(lambda: sum(r.getMessage() in ("ready", '{"level":"error","msg":"json"}')
                         for r in gateway_lines(caplog)) == 2, what="all lines")
    levels = {r.getMessage()[:40]: r.levelno for r in gateway_lines(caplog)}
    assert levels["plain stdout"] == logging.DEBUG
    assert levels["plain stderr"] == logging.WARNING
    assert levels["ERROR broken thing"] == logging.ERROR
    assert levels["[gateway] [info] calm"] == logging.INFO
    assert levels['{"level":"error","msg":"json"}'] == logging.ERROR
    assert not any(m.startswith("noise") for m in levels)
    long_line = next(r.getMessage() for r in gateway_lines(caplog) if r.getMessage().startswith("xxx"))
    assert long_line.endswith("[... line truncated at 64 KiB]") and len(long_line) < 70 * 1024
    assert "ready" in levels  # the line after the huge one is intact
    assert "\ufffd\ufffd\\x00bin" in levels  # invalid UTF-8 replaced, NUL escaped; the pump kept going


@pytest.mark.parametrize(("line", "level"), [
    ("[gateway] ready", None),  # what OpenClaw 2026.9 prints off-TTY: no level, the stream decides
    ("[gateway] remote model catalog refresh failed", None),
    ("model: error-free run, 0 ERRORS", None),
    ("ERROR: cannot bind", logging.ERROR),
    ("[gateway] WARN received SIGTERM", logging.WARNING),
    ("[heartbeat] [debug] tick", logging.DEBUG),
    ("(warn) low disk", logging.WARNING),
    ('ts=1 level=error msg="boom"', logging.ERROR),
    ("(node:4242) ExperimentalWarning: SQLite is an experimental feature", logging.WARNING),
    ('{"level":"warn","msg":"x"}', logging.WARNING),
    ('{"level":50,"msg":"pino"}', logging.ERROR),
    ('{"_meta":{"logLevelName":"FATAL"},"message":"tslog"}', logging.CRITICAL),
    ('{"msg":"no level"}', None),
    ("{not json", None),
])
def test_line_level(line: str, level: int | None) -> None:
    assert line_level(line) == level


def test_clean_drops_timestamp_and_colour_escapes_control_bytes() -> None:
    raw = b"2026-11-26T01:14:10.431+00:00 \x1b[31m[gateway]\x1b[0m loading\x07 \xff\r\n"
    assert clean(raw) == "[gateway] loading\\x07 \ufffd"


@pytest.mark.parametrize(("data", "limit", "cut"), [
    (b"abc SECRET-0123 def", 6, 4),  # the cut would split it: cut before it
    (b"abc SECRET-0123 def", 4, 4),  # right before it: nothing split
    (b"abc SECRET-0123 def", 15, 15),  # right after it
    (b"SECRET-0123SECRET-0123", 13, 11),  # the second one is split
    (b"xxxxxxxxxx", 5, 5),
])
def test_secret_safe_cut_never_splits_a_secret(data: bytes, limit: int, cut: int) -> None:
    register_secret("SECRET-0123")
    assert secret_safe_cut(data, limit) == cut


def test_a_secret_across_the_line_limit_is_masked_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-" + "Wv7" * 14
    register_secret(secret)
    output = tmp_path / "output"
    with output.open("wb") as out:
        for offset in (MAX_LINE - 20, MAX_LINE - len(secret), MAX_LINE - 1, MAX_LINE):
            out.write(b"x" * offset + secret.encode() + b"y" * 50 + b"\n")
        out.write(b"short " + secret.encode() + b"\n")
    OutputPump(output.open("rb"), "stdout", LoggingConfig()).run()
    lines = [r.getMessage() for r in gateway_lines(caplog)]
    assert len(lines) == 5 and lines[-1] == "short ***"
    assert all(line.endswith(TRUNCATED) and len(line) <= MAX_LINE + len(TRUNCATED) for line in lines[:4])
    assert not any(secret[:6] in line for line in lines)


# ---------------------------------------------------------------- the pidfile and leftovers

def test_pidfile_records_the_gateway_0600_and_goes_after_a_clean_stop(tmp_path: Path, spawn, caplog) -> None:
    item = spawn(make_config(tmp_path))
    pid = item.process.start()
    pidfile = tmp_path / "state" / leftovers.PIDFILE
    record = leftovers.read_pidfile(tmp_path / "state")
    assert record is not None and record == leftovers.PidRecord.of(pid, record.marker)
    assert stat.S_IMODE(pidfile.stat().st_mode) == 0o600
    marker = f"{proctree.GATEWAY_ID_ENV}={record.marker}".encode()
    assert marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    wait_for(lambda: any(r.getMessage() == "ready" for r in gateway_lines(caplog)), what="ready")
    assert item.process.stop() == ExitInfo(0, None)
    assert not pidfile.exists()


def test_pidfile_is_never_written_through_a_symlink(tmp_path: Path, spawn) -> None:
    (tmp_path / "state").mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "state" / leftovers.PIDFILE).symlink_to(target)
    item = spawn(make_config(tmp_path))
    pid = item.process.start()
    assert target.read_text() == "keep"
    pidfile = tmp_path / "state" / leftovers.PIDFILE
    assert not pidfile.is_symlink() and leftovers.read_pidfile(tmp_path / "state").pid == pid


def test_a_pidfile_symlink_is_not_read(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    leftovers.write_pidfile(elsewhere, leftovers.PidRecord(os.getpid(), 1, leftovers.boot_id(), "m" * 32))
    (tmp_path / leftovers.PIDFILE).symlink_to(elsewhere / leftovers.PIDFILE)
    assert leftovers.read_pidfile(elsewhere) is not None
    assert leftovers.read_pidfile(tmp_path) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_pidfile_fifo_or_of_another_uid_is_not_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / leftovers.PIDFILE)
    assert leftovers.read_pidfile(tmp_path) is None  # and did not block on the FIFO
    (tmp_path / leftovers.PIDFILE).unlink()
    leftovers.write_pidfile(tmp_path, leftovers.PidRecord(os.getpid(), 1, leftovers.boot_id(), "m" * 32))
    assert leftovers.read_pidfile(tmp_path) is not None
    os.chown(tmp_path / leftovers.PIDFILE, 65534, 65534)
    assert leftovers.read_pidfile(tmp_path) is None


def _sleep(env: dict[str, str], started: list[subprocess.Popen[bytes]]) -> int:
    started.append(subprocess.Popen(["sleep", "1000"], env={**os.environ, **env}, start_new_session=True))
    return started[-1].pid


def test_kill_leftovers_kills_what_the_pidfile_proves_ours_and_nothing_else(tmp_path: Path) -> None:
    marker = "f" * 32
    started: list[subprocess.Popen[bytes]] = []
    try:
        gateway = _sleep({proctree.GATEWAY_ID_ENV: marker}, started)
        record = leftovers.PidRecord.of(gateway, marker)
        assert record is not None
        helper = _sleep({proctree.GATEWAY_ID_ENV: marker}, started)
        admin = _sleep({"OPENCLAW_STATE_DIR": str(tmp_path)}, started)
        other = _sleep({proctree.GATEWAY_ID_ENV: "0" * 32}, started)
        leftovers.write_pidfile(tmp_path, record)
        assert leftovers.kill_leftovers(tmp_path) == sorted([gateway, helper])
        assert not pid_alive(gateway) and not pid_alive(helper)
        assert pid_alive(admin) and pid_alive(other)
    finally:
        for popen in started:
            popen.kill()
            popen.wait()


# ---------------------------------------------------------------- the double and clawsvc being SIGKILLed

def test_double_starts_with_token_from_env_and_stops_cleanly(tmp_path: Path, spawn) -> None:
    port = free_port()
    item = spawn(make_config(tmp_path, command=double_command(), port=port))
    pid = item.process.start()
    wait_for(lambda: _hello(f"ws://127.0.0.1:{port}/", TOKEN), what="hello-ok from the double")
    assert TOKEN.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert item.process.stop() == ExitInfo(0, None)


def _hello(url: str, token: str) -> bool:
    try:
        ws, hello = connect(url, token, timeout=5.0)
    except Exception:  # refused, UNAVAILABLE while starting, closed early: not ready yet
        return False
    ws.close()
    return hello.get("type") == "hello-ok"


def _write_config(tmp_path: Path, command: tuple[str, ...], port: int, env: dict[str, str]) -> Path:
    import yaml
    path = tmp_path / "clawsvc.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"command": list(command), "port": port, "env": env,
                                                "state_dir": str(tmp_path / "state")}}))
    return path


def _run_spawner(config_file: Path) -> tuple[subprocess.Popen[str], int]:
    spawner = subprocess.Popen([sys.executable, str(HELPERS / "spawner.py"), str(config_file)],
                               env={**os.environ, "SPAWNER_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    assert spawner.stdout is not None
    line = spawner.stdout.readline()
    assert line.startswith("gateway pid "), line
    return spawner, int(line.split()[-1])


def test_sigkill_of_clawsvc_leaves_no_gateway(tmp_path: Path) -> None:
    spawner, pid = _run_spawner(_write_config(tmp_path, FAKE, 18789, {}))
    try:
        wait_for(lambda: pid_alive(pid), what="gateway")
        spawner.kill()
        spawner.wait(30)
        wait_for(lambda: not pid_alive(pid), timeout=10, what="gateway to die with its parent")
    finally:
        spawner.kill()
        spawner.wait(30)
        if pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------- the real gateway

def _gateway_family(pid: int) -> list[int]:
    return [pid, *proctree.descendants(pid)]


@pytest.mark.realgateway
def test_real_gateway_starts_answers_hello_ok_and_stops_with_everything_gone(gateway_install, tmp_path, spawn,
                                                                            caplog) -> None:
    port = free_port()
    env = gateway_env(tmp_path / "state", port)
    env = {k: v for k, v in env.items() if k not in ("OPENCLAW_STATE_DIR", "OPENCLAW_CONFIG_PATH")}
    item = spawn(make_config(tmp_path, command=gateway_install.command, env=env, port=port, stop_timeout=30.0))
    pid = item.process.start()
    wait_for(lambda: _hello(f"ws://127.0.0.1:{port}/", TOKEN), timeout=90, what="hello-ok from the real gateway")
    wait_for(lambda: len(_gateway_family(pid)) >= 3, timeout=30, what="the gateway's two helper processes")
    family = _gateway_family(pid)
    for member in family:
        assert TOKEN.encode() not in Path(f"/proc/{member}/cmdline").read_bytes()
    assert f"{TOKEN_ENV}={TOKEN}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    info = item.process.stop()
    assert info == ExitInfo(0, None), info.describe()
    assert [p for p in family if pid_alive(p)] == []
    assert TOKEN not in caplog.text
    assert any("[gateway] ready" in r.getMessage() for r in gateway_lines(caplog))


@pytest.mark.realgateway
def test_real_gateway_dies_with_a_sigkilled_clawsvc(gateway_install, tmp_path) -> None:
    port = free_port()
    env = gateway_env(tmp_path / "state", port)
    spawner, pid = _run_spawner(_write_config(tmp_path, gateway_install.command, port, env))
    family: list[int] = []
    try:
        wait_for(lambda: len(_gateway_family(pid)) >= 3, timeout=60, what="the gateway's helper processes")
        family = _gateway_family(pid)
        spawner.kill()
        spawner.wait(30)
        wait_for(lambda: not any(pid_alive(p) for p in family), timeout=30, what="all gateway processes to exit")
    finally:
        spawner.kill()
        spawner.wait(30)
        for member in [pid, *family]:
            if pid_alive(member):
                os.kill(member, signal.SIGKILL)


def test_secret_looking_gateway_env_values_are_masked_in_logs(tmp_path: Path) -> None:
    config = make_config(tmp_path, env={"MY_SERVICE_API_KEY": "sk-typed-into-yaml-0001", "PLAIN": "visible-0001"})
    build_env(config, TOKEN, {}, base={})
    line = redact("gateway said: invalid key sk-typed-into-yaml-0001 (visible-0001)")
    assert "sk-typed-into-yaml-0001" not in line and "visible-0001" in line
