"""gateway.compile_cache: Node's compile cache for the gateway (NODE_COMPILE_CACHE) in a persistent, trusted
directory. Defaults, parsing, the gateway's environment, refusal of a directory another uid can write (run,
check-config, doctor), and with the real gateway: the cache fills, and what a warm one saves per start."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml
from double import double_command, free_port, python
from localusers import shared_group
from realgw import gateway_env
from service_proc import ServiceProcess, base_config, merge
from waiting import poll

from clawsvc import exitcodes
from clawsvc.commands.doctor.main import Level, check_compile_cache
from clawsvc.config import Config, ConfigError, GatewayConfig, parse_config
from clawsvc.config import model as config_model
from clawsvc.gateway import compile_cache
from clawsvc.gateway.process import SpawnError, build_env, prepare_compile_cache

NOBODY = 65534
MARKER = "OPENCLAW_PACKAGED_COMPILE_CACHE_RESPAWNED"
FAST = {
    "gateway": {"stop_timeout": 1.0, "start_timeout": 20.0},
    "connection": {"handshake_timeout": 0.5, "request_timeout": 2.0},
    "health": {"interval": 0.5, "timeout": 0.5, "failures": 2, "tick_grace": 2.0},
    "reconnect": {"base_delay": 0.05, "max_delay": 0.2, "max_attempts": 5, "stable_after": 60.0},
}


def config_with(tmp_path: Path, cache: Path | None, env: dict[str, str] | None = None) -> Config:
    return Config(gateway=GatewayConfig(state_dir=tmp_path / "state", compile_cache=cache,
                                        env=MappingProxyType(env or {})))


def environ_of(pid: int, *names: str) -> dict[str, str]:
    """Only the named variables of a process (its environment also holds the gateway token: never shown)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (entry.decode(errors="replace").partition("=") for entry in entries if entry)
    return {name: value for name, _, value in pairs if name in names}


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- defaults and parsing

def test_default_is_under_systemds_cache_directory_first_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/clawsvc/alpha:/var/cache/other")
    assert GatewayConfig().compile_cache == Path("/var/cache/clawsvc/alpha/node-compile-cache")


def test_default_as_root_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setattr(config_model, "_system_wide", lambda: True)
    assert GatewayConfig().compile_cache == Path("/var/cache/clawsvc/node-compile-cache")


def test_default_for_a_user_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
    monkeypatch.setattr(config_model, "_system_wide", lambda: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert GatewayConfig().compile_cache == tmp_path / "xdg/clawsvc/node-compile-cache"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert GatewayConfig().compile_cache == tmp_path / "home/.cache/clawsvc/node-compile-cache"


def test_false_turns_it_off_and_a_path_is_taken_like_state_dir(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config("gateway:\n  compile_cache: false\n").gateway.compile_cache is None
    assert parse_config("gateway:\n  compile_cache: /srv/cc\n").gateway.compile_cache == Path("/srv/cc")
    monkeypatch.chdir(tmp_path)
    relative = parse_config("gateway:\n  compile_cache: cc\n")
    assert compile_cache.compile_cache_dir(relative) == tmp_path / "cc"


@pytest.mark.parametrize(("value", "words"), [
    ("true", "expected a path or false, got bool True"),
    ("", "expected a path or false, got null"),
    ("5", "expected a path or false, got int 5"),
    ('"/var/a\\0b"', "NUL"),
    ('"/var/a\\nb"', "line break"),
    ("/" + "d" * 5000, "at most 4095 bytes"),
])
def test_bad_values_name_the_key_and_line(value: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"# x\ngateway:\n  compile_cache: {value}\n", "c.yaml")
    message = str(caught.value)
    assert message.startswith("c.yaml:3: gateway.compile_cache: ") and words in message
    assert "\n" not in message


# ---------------------------------------------------------------- the gateway's environment

def test_env_names_the_cache_and_keeps_the_gateway_unwrapped(tmp_path: Path) -> None:
    env = build_env(config_with(tmp_path, tmp_path / "cc"), "tok", {}, base={"PATH": "/usr/bin"})
    assert env["NODE_COMPILE_CACHE"] == str(tmp_path / "cc")
    assert env[MARKER] == "1"


def test_gateway_env_wins_and_clawsvc_then_manages_nothing(tmp_path: Path) -> None:
    config = config_with(tmp_path, tmp_path / "cc", env={"NODE_COMPILE_CACHE": "/srv/mine"})
    assert compile_cache.compile_cache_dir(config) is None
    assert build_env(config, "tok", {}, base={})["NODE_COMPILE_CACHE"] == "/srv/mine"
    prepare_compile_cache(config, {})
    assert not (tmp_path / "cc").exists()


def test_false_leaves_node_compile_cache_alone(tmp_path: Path) -> None:
    config = config_with(tmp_path, None)
    assert compile_cache.compile_cache_dir(config) is None
    env = build_env(config, "tok", {}, base={"PATH": "/usr/bin"})
    assert "NODE_COMPILE_CACHE" not in env and MARKER not in env
    inherited = build_env(config, "tok", {}, base={"NODE_COMPILE_CACHE": "/srv/inherited"})
    assert (inherited["NODE_COMPILE_CACHE"], inherited[MARKER]) == ("/srv/inherited", "1")


def test_prepare_creates_it_0700(tmp_path: Path) -> None:
    cache = tmp_path / "a" / "cc"
    env = {"NODE_COMPILE_CACHE": str(cache)}
    prepare_compile_cache(config_with(tmp_path, cache), env)
    assert cache.is_dir() and mode_of(cache) == 0o700
    assert env["NODE_COMPILE_CACHE"] == str(cache)


def test_one_that_cannot_be_created_is_left_out_with_a_warning(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    cache = tmp_path / "file" / "cc"
    env = {"NODE_COMPILE_CACHE": str(cache), "KEEP": "1"}
    prepare_compile_cache(config_with(tmp_path, cache), env)
    assert env == {"KEEP": "1"}
    assert any(f"cannot create gateway.compile_cache {cache}" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- a cache another uid can write is refused

@pytest.fixture(params=["group-writable", "foreign-owned"])
def planted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    cache = tmp_path / "planted-cache"
    cache.mkdir()
    if request.param == "group-writable":
        shared_group(cache)  # root:root would be root's private group
        cache.chmod(0o770)
        yield cache, "writable by group/others"
    else:
        if os.geteuid() != 0:
            pytest.skip("planting a cache owned by another user needs root (chown)")
        cache.chmod(0o700)
        os.chown(cache, NOBODY, NOBODY)
        yield cache, f"is owned by user nobody (uid {NOBODY})"


def test_spawn_refuses_a_planted_cache(planted: tuple[Path, str], tmp_path: Path) -> None:
    cache, why = planted
    with pytest.raises(SpawnError, match=re.escape(why)) as caught:
        prepare_compile_cache(config_with(tmp_path, cache), {})
    assert str(caught.value).startswith(f"gateway.compile_cache {cache}") and "run: chown" in str(caught.value)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLAWSVC_CONFIG", "CACHE_DIRECTORY")}
    return subprocess.run([sys.executable, "-m", "clawsvc", "check-config", "-c", str(path)], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def test_check_config_refuses_a_planted_cache_in_one_line(planted: tuple[Path, str], tmp_path: Path) -> None:
    cache, why = planted
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"command": [python()], "state_dir": str(tmp_path / "s"),
                                                "compile_cache": str(cache)}}))
    done = check_config(path)
    assert done.returncode == exitcodes.CONFIG and done.stdout == ""
    assert done.stderr.startswith(f"clawsvc: gateway.compile_cache {cache}") and why in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_check_config_print_shows_the_effective_value(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"command": [python()], "state_dir": str(tmp_path / "s"),
                                                "compile_cache": str(tmp_path / "cc")}}))
    shown = subprocess.run([sys.executable, "-m", "clawsvc", "check-config", "-c", str(path), "--print"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["gateway"]["compile_cache"] == str(tmp_path / "cc")
    path.write_text(yaml.safe_dump({"gateway": {"command": [python()], "compile_cache": False}}))
    off = subprocess.run([sys.executable, "-m", "clawsvc", "check-config", "-c", str(path), "--print"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert off.returncode == 0, off.stderr
    printed = yaml.safe_load(off.stdout)
    assert printed["gateway"]["compile_cache"] is False
    assert parse_config(yaml.safe_dump(printed)).gateway.compile_cache is None  # what is printed reads back


def test_doctor_fails_a_planted_cache_and_tells_a_warm_one(planted: tuple[Path, str], tmp_path: Path) -> None:
    cache, why = planted
    [finding] = check_compile_cache(config_with(tmp_path, cache))
    assert finding.level is Level.FAIL and why in finding.text
    warm = tmp_path / "warm"
    (warm / "v24").mkdir(parents=True, mode=0o700)
    warm.chmod(0o700)
    (warm / "v24" / "entry").write_bytes(b"x")
    [finding] = check_compile_cache(config_with(tmp_path, warm))
    assert (finding.level, finding.text) == (Level.OK, f"{warm} (warm, 1 files)")
    [finding] = check_compile_cache(config_with(tmp_path, None))
    assert finding.level is Level.OK and "off" in finding.text


# ---------------------------------------------------------------- `clawsvc run` on the gateway double

@pytest.fixture
def services() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for svc in started:
        svc.close()


def run_double(services: list[ServiceProcess], root: Path, cache: Path) -> ServiceProcess:
    config = merge(merge(base_config(root, double_command(), free_port()), FAST),
                   {"gateway": {"compile_cache": str(cache), "env": {"DOUBLE_TICK_MS": "300"}}})
    svc = ServiceProcess.start(root, config)
    services.append(svc)
    return svc


def test_the_gateway_child_gets_a_private_cache(services: list[ServiceProcess], tmp_path: Path) -> None:
    cache = tmp_path / "var-cache" / "node-compile-cache"
    svc = run_double(services, tmp_path, cache)
    svc.peer.wait_for("^READY=1", 60)
    pid = svc.status()["pid"]
    assert environ_of(pid, "NODE_COMPILE_CACHE", MARKER) == {"NODE_COMPILE_CACHE": str(cache), MARKER: "1"}
    assert mode_of(cache) == 0o700 and cache.stat().st_uid == os.geteuid()
    assert svc.terminate() == 0


def test_run_refuses_a_planted_cache_with_exit_78(services: list[ServiceProcess], planted: tuple[Path, str],
                                                  tmp_path: Path) -> None:
    cache, why = planted
    svc = run_double(services, tmp_path / "svc", cache)
    assert svc.wait(60) == exitcodes.CONFIG
    log = svc.log()
    assert f"gateway.compile_cache {cache}" in log and why in log, log[-2000:]
    assert "started gateway pid" not in log


def test_run_starts_without_a_cache_it_cannot_create(services: list[ServiceProcess], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    svc = run_double(services, tmp_path / "svc", tmp_path / "file" / "cc")
    svc.peer.wait_for("^READY=1", 60)
    assert environ_of(svc.status()["pid"], "NODE_COMPILE_CACHE") == {}
    assert "the gateway starts without a persistent compile cache" in svc.log()


# ---------------------------------------------------------------- the real gateway

LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
REAL_TIMEOUT = 240.0  # one start on 2 busy cores took up to 50 s; this is a bound, not a measurement


def _stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f")


def spawn_to_hello(svc: ServiceProcess, since: int) -> tuple[int, float]:
    """(gateway pid, seconds from its spawn to clawsvc's hello-ok) of the first start logged after byte `since`."""
    log = svc.log()[since:]
    started = re.search(LOG_TIME + r".*started gateway pid (\d+): ", log, re.M)
    assert started, log[-3000:]
    connected = re.search(LOG_TIME + r".*connected to gateway ", log[started.end():], re.M)
    assert connected, log[-3000:]
    return int(started.group(2)), (_stamp(connected.group(1)) - _stamp(started.group(1))).total_seconds()


def cache_files(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def wait_running(svc: ServiceProcess, since: int, old_pid: int | None) -> int:
    poll(lambda: re.search(r"connected to gateway ", svc.log()[since:]), REAL_TIMEOUT,
         f"hello-ok of the next gateway:\n{svc.log()[-3000:]}")
    pid, _ = spawn_to_hello(svc, since)
    assert pid != old_pid
    return pid


@pytest.mark.timeout(1800)  # six real gateway starts and stops, on busy cores
def test_real_gateway_fills_the_cache_and_starts_faster_warm(gateway_install, tmp_path: Path) -> None:
    root, port = tmp_path, free_port()
    state = root / "state"
    caches = [root / f"cache-{n}" for n in range(3)]
    config = merge(base_config(root, gateway_install.command, port), {
        "gateway": {"env": gateway_env(state, port), "compile_cache": str(caches[0]),
                    "stop_timeout": 10.0, "start_timeout": REAL_TIMEOUT},
    })
    state.chmod(0o700)
    svc = ServiceProcess.start(root, config)
    try:
        svc.peer.wait_for("^READY=1", REAL_TIMEOUT)
        pid, first = spawn_to_hello(svc, 0)
        assert environ_of(pid, "NODE_COMPILE_CACHE")["NODE_COMPILE_CACHE"] == str(caches[0])
        # the marker works: the process clawsvc spawned is the gateway itself, not openclaw's re-exec wrapper
        assert Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"openclaw-gateway")
        at_ready = cache_files(caches[0])
        cold, warm = [first], []
        for n, cache in enumerate(caches):
            since = len(svc.log())
            svc.request({"cmd": "restart-gateway", "mode": "fresh"}, timeout=30)  # a new gateway, same cache
            pid = wait_running(svc, since, pid)
            assert cache_files(cache) > 0
            warm.append(spawn_to_hello(svc, since)[1])
            if n + 1 < len(caches):
                since = len(svc.log())
                svc.rewrite_config(merge(svc.config, {"gateway": {"compile_cache": str(caches[n + 1])}}))
                svc.send_signal(signal.SIGHUP)  # a new, empty cache dir: the next start is cold
                pid = wait_running(svc, since, pid)
                assert environ_of(pid, "NODE_COMPILE_CACHE")["NODE_COMPILE_CACHE"] == str(caches[n + 1])
                cold.append(spawn_to_hello(svc, since)[1])
        print(f"\ncompile cache: {at_ready} files at the first READY, {cache_files(caches[0])} after its stop")
        print(f"spawn -> hello-ok cold: {', '.join(f'{s:.2f}' for s in cold)} s; "
              f"warm: {', '.join(f'{s:.2f}' for s in warm)} s")
        assert svc.terminate(60) == 0
        assert svc.leftovers() == []
    finally:
        svc.close()
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
