"""`clawsvc upgrade` against the real gateway: one clawsvc service on a farm prefix (symlinks to the test cache's
node-24.21.0, openclaw-2026.9.5 and openclaw-2026.9.6, plus fake versions), driven by the ordered tests below.
Timings (canary duration, switch-to-running downtime) are printed (-s).

The service starts on 2026.9.5 and is upgraded to 2026.9.6: the other way round cannot work on a service's own
state, because 2026.9.6 migrates the state database to a schema 2026.9.5 refuses (exit 78, "database schema(s)
are newer than this build"). The canary runs on a copy of that state, so the last tests show both ways back
(`--rollback`, `upgrade 2026.9.5`) refused by the canary while 2026.9.6 keeps serving."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realgw import QUIET_ENV, cache_dir, free_port, provision
from service_proc import STRIPPED, ServiceProcess, base_config, merge
from upgrade_farm import NEW, OLD, build_farm

from clawsvc.commands.runtime import links as gateway_links
from clawsvc.commands.runtime.provision import MARKER, Installation

pytestmark = pytest.mark.realgateway

BROKEN = "2026.9.90"          # exits 1 at once: refused by the canary
SERVICE_ONLY_FAILS = "2026.9.91"  # answers as the canary, exits 1 under the service
START_TIMEOUT = 180.0
UPGRADE_TIMEOUT = 900.0  # canary + restart + health, each bounded by start_timeout; a loaded 2-core machine


def fake_version(farm: Path, version: str, real: Installation, script: str) -> None:
    """openclaw-<version> whose entry is `script` (JavaScript), run by the real node. Made by the test that
    uses it: a good switch prunes it (only the two linked versions stay)."""
    path = gateway_links.version_dir(farm, version)
    entry = path / gateway_links.ENTRY
    entry.parent.mkdir(parents=True)
    entry.write_text(script)
    (entry.parent / "package.json").write_text(json.dumps({"engines": {"node": ">=24.16 <25 || >=26.1"}}))
    node_rel = real.node.relative_to(cache_dir())
    (path / MARKER).write_text(json.dumps({"openclaw": version, "node_version": real.node_version,
                                           "node": str(node_rel), "entry": str(entry.relative_to(farm))}))
    gateway_links.ensure_node_link(path, farm / node_rel)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory, gateway_install: Installation) -> Path:
    return build_farm(tmp_path_factory.mktemp("farm"))


class Held:
    """The module's clawsvc; a test may restart it (the new process replaces the old one here)."""

    def __init__(self, svc: ServiceProcess) -> None:
        self.svc = svc

    def restart(self) -> ServiceProcess:
        assert self.svc.terminate() == 0
        self.svc.close()
        self.svc = ServiceProcess.start(self.svc.root, self.svc.config)
        return self.svc


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory, farm: Path) -> Iterator[Held]:
    root = tmp_path_factory.mktemp("svc")
    config = merge(base_config(root, gateway_links.stable_command(farm), free_port()),
                   {"gateway": {"env": QUIET_ENV, "start_timeout": f"{START_TIMEOUT:g}s",
                                "compile_cache": str(root / "compile-cache")}})
    holder = Held(ServiceProcess.start(root, config))
    try:
        running(holder.svc, OLD)
        yield holder
    finally:
        holder.svc.close()


@pytest.fixture
def service(held: Held) -> ServiceProcess:
    return held.svc


def running(svc: ServiceProcess, version: str) -> dict[str, Any]:
    return svc.wait_state(lambda s: s["state"] == "running" and s["gatewayVersion"] == version, START_TIMEOUT,
                          f"the service running {version}")


def upgrade(svc: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in STRIPPED}
    done = subprocess.run([sys.executable, "-m", "clawsvc", "upgrade", *args, "-c", str(svc.config_path)],
                          env=env, capture_output=True, text=True, timeout=UPGRADE_TIMEOUT)
    print(f"\n$ clawsvc upgrade {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}")
    assert "Traceback" not in done.stdout + done.stderr
    assert svc.token not in done.stdout + done.stderr
    return done


def links(farm: Path) -> tuple[str | None, str | None]:
    return gateway_links.linked_version(farm), gateway_links.linked_version(farm, gateway_links.PREVIOUS)


def test_upgrade_serves_the_new_release_healthy(service: ServiceProcess, farm: Path) -> None:
    fake_version(farm, "2026.9.80", provision(OLD), "process.exit(1);\n")  # neither linked: pruned below
    before = service.status()
    done = upgrade(service, NEW)
    assert done.returncode == 0
    assert re.search(rf"canary: openclaw {NEW} answered hello-ok [\d.]+s after its start", done.stderr)
    status = service.status()
    assert (status["state"], status["gatewayVersion"]) == ("running", NEW) and status["pid"] != before["pid"]
    assert service.request({"cmd": "rpc", "method": "health", "params": None}, 60) is not None
    assert links(farm) == (NEW, OLD)
    assert not gateway_links.version_dir(farm, "2026.9.80").exists()
    assert (farm / f"openclaw-{OLD}").is_symlink() and (cache_dir() / f"openclaw-{OLD}").is_dir()


def test_the_switch_survives_a_restart_of_clawsvc(held: Held, farm: Path) -> None:
    restarted = held.restart()
    assert running(restarted, NEW)["gatewayVersion"] == NEW
    assert links(farm) == (NEW, OLD)


def test_a_version_that_cannot_start_is_refused_by_the_canary(service: ServiceProcess, farm: Path,
                                                              gateway_install: Installation) -> None:
    fake_version(farm, BROKEN, gateway_install, 'console.error("boom: this build cannot start"); process.exit(1);\n')
    before = service.status()
    done = upgrade(service, BROKEN)
    assert done.returncode == 1
    # its own CLI cannot run its database preflight: refused before the canary starts, with the reason
    assert (f"openclaw {BROKEN} failed its canary: its database preflight: it gave no verdict (exit 1): boom: this "
            "build cannot start") in done.stderr
    after = service.status()
    assert (after["pid"], after["gatewayVersion"], after["state"]) == (before["pid"], NEW, "running")
    assert links(farm) == (NEW, OLD)


def test_a_version_failing_under_the_service_is_rolled_back(service: ServiceProcess, farm: Path,
                                                            gateway_install: Installation) -> None:
    fake_version(farm, SERVICE_ONLY_FAILS, gateway_install,
                 'if (!(process.env.OPENCLAW_STATE_DIR || "").includes("/clawsvc-canary-")) {\n'
                 '  console.error("fails under the service"); process.exit(1);\n}\n'
                 f'await import({json.dumps(str(gateway_install.entry))});\n')
    done = upgrade(service, SERVICE_ONLY_FAILS)
    assert done.returncode == 1
    assert f"canary: openclaw {SERVICE_ONLY_FAILS} answered hello-ok" in done.stderr
    assert f"error: rolled back to {NEW}: the new gateway exited with status 1" in done.stderr
    status = service.status()
    assert (status["state"], status["gatewayVersion"]) == ("running", NEW)
    assert links(farm) == (NEW, OLD)


def assert_refused_for_the_schema(service: ServiceProcess, farm: Path, done: subprocess.CompletedProcess[str],
                                  before: dict[str, Any]) -> None:
    assert done.returncode == 1
    # the target release's own database preflight refuses the copy before the canary even starts
    assert (f"openclaw {OLD} failed its canary: its database preflight: the state database is incompatible: found "
            "schema 18, this release supports 17") in done.stderr
    assert f"hint: the service's state was migrated by a newer release than {OLD}" in done.stderr
    after = service.status()
    assert (after["pid"], after["gatewayVersion"], after["state"]) == (before["pid"], NEW, "running")
    assert links(farm) == (NEW, OLD)


def test_rollback_to_a_release_older_than_the_state_is_refused_by_the_canary(service: ServiceProcess,
                                                                             farm: Path) -> None:
    """2026.9.5 refuses the state 2026.9.6 migrated: its database preflight, on the canary's copy, so nothing is
    switched."""
    before = service.status()
    done = upgrade(service, "--rollback")
    assert f"canary: starting openclaw {OLD}" in done.stderr
    assert_refused_for_the_schema(service, farm, done, before)


def test_upgrade_to_a_release_older_than_the_state_is_refused_by_the_canary(service: ServiceProcess,
                                                                            farm: Path) -> None:
    """Issue 13's `clawsvc upgrade 2026.9.5` from 2026.9.6: the honest outcome is refused, 2026.9.6 serving."""
    before = service.status()
    done = upgrade(service, OLD)
    assert_refused_for_the_schema(service, farm, done, before)
    assert service.request({"cmd": "rpc", "method": "health", "params": None}, 60) is not None
