"""The start plan end to end: `clawsvc run` on the double, restarted with the same config. The second start execs
the gateway from the plan and adopts it when it matches the config, or kills it and starts the config's."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from double import double_command, free_port, pid_alive
from faultkit import FAST, STARTED, Services, ready, stops_clean
from service_proc import ServiceProcess, base_config, merge

from clawsvc import exitcodes
from clawsvc.gateway import leftovers
from clawsvc.gateway.spawnenv import ALLOW_UNCONFIGURED, GATEWAY_ID_ENV, inherited
from clawsvc.service import run, startplan

ADOPTED = r"adopted gateway pid (\d+), started early from the start plan"


def service_config(root: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    config = merge(base_config(root, double_command(), free_port()), FAST)
    return merge(config, extra or {})


def start(services: Services, root: Path, config: dict[str, Any], env: dict[str, str] | None = None
          ) -> tuple[ServiceProcess, Callable[[], str]]:
    """clawsvc on `config` in `root`, and its own part of the log all starts in `root` share."""
    log = root / "clawsvc.log"
    offset = log.stat().st_size if log.exists() else 0
    svc = ServiceProcess.start(root, config, env=env)  # the same NOTIFY_SOCKET each time, as under systemd
    services.started.append(svc)
    return svc, lambda: log.read_bytes()[offset:].decode(errors="replace")


def spawned(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(STARTED, log)]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_restart_adopts_the_gateway_the_plan_started(services: Services, tmp_path: Path) -> None:
    config = service_config(tmp_path)
    first, first_log = start(services, tmp_path, config)
    ready(first)
    assert not re.search(ADOPTED, first_log())
    assert f"no start plan used ({tmp_path}/cache/start-plan does not exist yet)" in first_log()
    assert (tmp_path / "cache" / startplan.FILE).exists()
    stops_clean(first)
    first.close()  # frees the notify socket's name for the next start

    second, second_log = start(services, tmp_path, config)
    status = ready(second)
    assert re.search(ADOPTED, second_log()), second_log()
    adopted = int(re.findall(ADOPTED, second_log())[0])
    assert spawned(second_log()) == [adopted] == [status["pid"]]  # the early gateway is the one and only
    assert environ_of(adopted)["OPENCLAW_GATEWAY_TOKEN"] == second.token
    record = leftovers.read_pidfile(Path(second.state_dir))  # what a later clawsvc would clean up after it
    assert record is not None and record.pid == adopted
    assert record.marker == environ_of(adopted)[GATEWAY_ID_ENV]
    assert "out of date" not in second_log()
    stops_clean(second)
    assert not pid_alive(adopted)


def test_a_key_added_since_the_plan_replaces_the_early_gateway(services: Services, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    config = service_config(tmp_path, {"providers": ["anthropic"]})
    first, _ = start(services, tmp_path, config, env)
    ready(first)
    stops_clean(first)
    first.close()  # frees the notify socket's name for the next start

    key = credentials / "anthropic-api-key"
    key.write_text("sk-ant-added-since\n")
    key.chmod(0o600)
    second, second_log = start(services, tmp_path, config, env)
    status = ready(second)
    found = re.search(r"the start plan was out of date \((.*) differ from the config's gateway\); killed the "
                      r"gateway it started early \(pid (\d+)\)", second_log())
    assert found, second_log()[-3000:]
    assert found.group(1) == "$ANTHROPIC_API_KEY"
    early = int(found.group(2))
    assert not pid_alive(early)
    assert status["pid"] != early and spawned(second_log()) == [status["pid"]]
    assert environ_of(status["pid"])["ANTHROPIC_API_KEY"] == "sk-ant-added-since"
    assert "sk-ant-added-since" not in second_log()
    stops_clean(second)
    second.close()

    third, third_log = start(services, tmp_path, config, env)  # the second start's plan has the key's file
    status = ready(third)
    assert [int(pid) for pid in re.findall(ADOPTED, third_log())] == [status["pid"]]
    assert environ_of(status["pid"])["ANTHROPIC_API_KEY"] == "sk-ant-added-since"
    stops_clean(third)


def test_an_edited_config_is_read_before_any_gateway_starts(services: Services, tmp_path: Path) -> None:
    config = service_config(tmp_path)
    first, _ = start(services, tmp_path, config)
    ready(first)
    stops_clean(first)
    first.close()  # frees the notify socket's name for the next start
    config = merge(config, {"gateway": {"port": free_port()}})
    second, second_log = start(services, tmp_path, config)
    status = ready(second)
    assert not re.search(ADOPTED, second_log()) and "out of date" not in second_log()
    assert re.search(r"INFO +clawsvc: no start plan used \(/\S+/clawsvc\.yaml changed since the plan was written\): "
                     r"the gateway starts after the config is read", second_log())
    assert f"--port {config['gateway']['port']}" in second_log()
    assert spawned(second_log()) == [status["pid"]]
    stops_clean(second)


def test_a_start_refused_after_the_early_exec_leaves_no_gateway(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The config is read after the early exec: when it is refused then, the early gateway goes with clawsvc."""
    monkeypatch.setenv("CACHE_DIRECTORY", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    program = tmp_path / "gateway.sh"
    program.write_text("#!/bin/sh\nexec sleep 60\n")
    program.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    bad = tmp_path / "clawsvc.yaml"
    bad.write_text("gateway: {port: not-a-port}\n")
    cli = ["run", "-c", str(bad)]
    startplan.save(cli, [str(program)], inherited(os.environ), str(state), free_port(), {}, [str(bad)],
                   [str(state)])
    early = startplan.begin(cli)
    assert isinstance(early, startplan.EarlyGateway) and pid_alive(early.pid)
    try:
        code = run.main(argparse.Namespace(config=str(bad), early_gateway=early, start_plan_argv=cli))
    finally:
        early.discard()
    assert code == exitcodes.CONFIG
    assert not pid_alive(early.pid)
    assert early.argv == [str(program), ALLOW_UNCONFIGURED]
