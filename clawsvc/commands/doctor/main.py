"""`clawsvc doctor`: one line per check of what the service needs, from the same code the service runs.

It judges exactly as `check-config` and `run` do: each step of the very preflight they run (service.preflight,
judged as the service when run as root, like `sudo clawsvc check-config`) is a line of its own, a refusal a FAIL;
then doctor's own checks add what preflight does not look at (the port, the keyring, provider keys, the units
and their credentials) and describe what it accepted (node and openclaw versions, where the token comes from,
whether the compile cache is warm). A check of doctor's own about something preflight refused is left out.

Lines start with `ok`, `warn`, `FAIL` or `skip` (plain ASCII: journals, dumb terminals, grep). `--fix` first
repairs what it can (gatewayside.fix: the state dir's owner, openclaw.json's gateway.auth), then checks. Exit 0 when no
check failed (warnings allowed: no keyring backend is normal on a headless server), 1 when any failed, 78
(like `check-config`) when the config cannot be loaded: its error is the first FAIL, and the checks that do not
need a config (keyring, installed units) still run. Without --fix nothing is created or changed; no secret is
printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clawsvc import exitcodes, trust
from clawsvc.commands.control.client import client_socket
from clawsvc.commands.doctor import gatewayside
from clawsvc.commands.doctor.findings import Finding, Level
from clawsvc.commands.doctor.preflight import Preflight, command_findings, run_preflight
from clawsvc.commands.doctor.stores import check_compile_cache, check_credentials
from clawsvc.commands.install.units import read_unit, unit_path
from clawsvc.config import Config, ConfigError, default_config_path, load_config
from clawsvc.config.instances import unit_name
from clawsvc.control.client import request
from clawsvc.control.wire import ControlError, ServiceNotRunning
from clawsvc.gateway.ports import port_holder
from clawsvc.gateway.proctree import descendants
from clawsvc.secrets import describe_token_source, keyring_status, provider_env_name, provider_keys
from clawsvc.service.preflight import COMMAND
from clawsvc.service.status import BadSnapshot, Snapshot, State

STATUS_TIMEOUT = 3.0


@dataclass
class Doctor:
    """The facts several checks share, each looked up once."""

    units: dict[str, Path] = field(default_factory=dict)  # kind -> installed unit file
    unit_configs: dict[str, Path] = field(default_factory=dict)  # kind -> the unit's `run -c FILE`
    credentials: dict[str, str | None] = field(default_factory=dict)  # credential id -> source file (units)
    status: Snapshot | None = None  # the running service's status reply
    preflight: Preflight = field(default_factory=Preflight)  # what the steps of check-config and run found
    unreachable: str | None = None  # why a control socket that is there did not answer
    keyring_usable: bool = False


class _Collect(logging.Handler):
    """Hands each warning the reused service code logs to the innermost capture."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.sinks: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.sinks:
            self.sinks[-1].append(record.getMessage())


_COLLECT = _Collect()


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Warnings logged under "clawsvc", as text for the report instead of stray stderr lines."""
    sink: list[str] = []
    _COLLECT.sinks.append(sink)
    logging.getLogger("clawsvc").addHandler(_COLLECT)  # adding it twice is a no-op
    try:
        yield sink
    finally:
        _COLLECT.sinks.pop()
        if not _COLLECT.sinks:
            logging.getLogger("clawsvc").removeHandler(_COLLECT)


# ---------------------------------------------------------------- checks that need no config

def check_keyring(doc: Doctor) -> list[Finding]:
    usable, backend = keyring_status()
    doc.keyring_usable = usable
    if usable:
        return [Finding(Level.OK, "keyring", backend)]
    return [Finding(Level.WARN, "keyring", f"{backend}; normal on a headless server: give the service its "
                    "token and API keys as systemd credentials (LoadCredential=, see the unit) or auth.token_file")]


def _read_unit(doc: Doctor, kind: str, unit: Path) -> list[Finding]:
    """Note the unit's config file and credentials; a LoadCredential= file that is missing is a problem."""
    facts = read_unit(unit)
    if facts.config is not None:
        doc.unit_configs[kind] = facts.config
    doc.credentials.update(facts.credentials)
    return [Finding(Level.FAIL, "units", f"{unit} loads credential {name} from {source}, which does not exist: "
                    "systemd will refuse to start the unit") for name, source in facts.missing]


def check_units(doc: Doctor) -> list[Finding]:
    kinds = ("launchd",) if sys.platform == "darwin" else ("system", "user")
    paths = {kind: unit_path(kind) for kind in kinds}
    doc.units = {kind: path for kind, path in paths.items() if path is not None and path.is_file()}
    if not doc.units:
        looked = ", ".join(str(p) for p in paths.values() if p is not None)
        return [Finding(Level.WARN, "units", f"none installed (looked for {looked}); run `clawsvc install`")]
    findings = []
    for kind, path in doc.units.items():
        problems = _read_unit(doc, kind, path) if kind != "launchd" else []
        config = doc.unit_configs.get(kind)
        findings += [Finding(Level.OK, "units", f"{kind} unit {path}" + (f" (config {config})" if config else "")),
                     *problems]
    return findings


# ---------------------------------------------------------------- checks that need the config

def ask_service(doc: Doctor, config: Config) -> None:
    try:
        reply = request(client_socket(config.control.socket), {"cmd": "status"}, STATUS_TIMEOUT)
    except ServiceNotRunning:
        return
    except ControlError as exc:
        doc.unreachable = f"cannot ask clawsvc: {exc.message}"
        return
    try:
        doc.status = Snapshot.from_dict(reply)
    except BadSnapshot as exc:
        doc.unreachable = f"unexpected status reply from {config.control.socket}: {exc}"


def _ours(doc: Doctor, pid: int | None) -> bool:
    """Whether pid is the running service's gateway (or, when the OS does not name the holder, the service
    reports that its gateway is running on this port)."""
    status = doc.status
    if status is None:
        return False
    if pid is None:
        return status.state is State.RUNNING
    return pid == status.pid or pid in descendants(status.service_pid)


def check_port(doc: Doctor, config: Config) -> list[Finding]:
    port = config.gateway.port
    holder = port_holder(port)
    if holder is None:
        return [Finding(Level.OK, "gateway.port", f"{port} is free")]
    if doc.status is not None and doc.status.port == port and _ours(doc, holder.pid):
        return [Finding(Level.OK, "gateway.port", f"{port} is held by {holder.describe()}, the gateway of the "
                        f"running clawsvc (pid {doc.status.service_pid})")]
    text = f"{port} is held by {holder.describe()}"
    if doc.unreachable:
        return [Finding(Level.WARN, "gateway.port", f"{text}; whether by clawsvc's gateway is unknown: "
                        f"{doc.unreachable}")]
    if config.gateway.adopt_existing and (holder.name or "").startswith(("node", "openclaw")):
        return [Finding(Level.WARN, "gateway.port", f"{text}; clawsvc will adopt it if it is an OpenClaw "
                        "gateway that accepts clawsvc's token (gateway.adopt_existing), else fail to start")]
    return [Finding(Level.FAIL, "gateway.port", f"{text}, not by clawsvc's gateway: stop that process or "
                    "set gateway.port")]


def check_token(doc: Doctor, config: Config) -> list[Finding]:
    found = describe_token_source(config)
    source = found.source
    if source.startswith("none yet") and "gateway-token" in doc.credentials:
        where = doc.credentials["gateway-token"]
        source = f"credential gateway-token (from the unit{f', file {where}' if where else ''})"
    if found.problem:
        return [Finding(Level.FAIL, "token", found.problem)]
    findings = [Finding(Level.OK, "token", source)]
    if found.warning:
        findings.append(Finding(Level.WARN, "token", found.warning))
    return findings


def check_provider_keys(doc: Doctor, config: Config) -> list[Finding]:
    if not config.providers:
        return [Finding(Level.OK, "provider keys", "none configured (providers: [])")]
    found: dict[str, str] = {}
    with _captured_warnings() as keyring_warnings:
        stored = provider_keys(config)
        for provider in config.providers:
            if provider in stored:
                found[provider] = stored[provider][1]
            elif provider_env_name(provider) in config.gateway.env:
                found[provider] = "gateway.env"
            elif f"{provider}-api-key" in doc.credentials:
                found[provider] = "credential in the unit"
    findings = [Finding(Level.WARN, "provider keys", text) for text in keyring_warnings if doc.keyring_usable]
    missing = [p for p in config.providers if p not in found]
    if not found:
        return [*findings, Finding(Level.WARN, "provider keys", f"none found for {', '.join(missing)}; "
                                   "the gateway starts but cannot call a model: `clawsvc keys set PROVIDER` or "
                                   "LoadCredential=PROVIDER-api-key:FILE, then `systemctl restart clawsvc`")]
    names = ", ".join(f"{p} ({where})" for p, where in found.items())
    rest = f"; none for {', '.join(missing)}" if missing else ""
    return [*findings, Finding(Level.OK, "provider keys", names + rest)]


def _directory(topic: str, path: Path, private: bool) -> Finding:
    path = path.absolute()
    if path.is_dir():
        mode = stat.S_IMODE(path.stat().st_mode)
        if not os.access(path, os.W_OK | os.X_OK):
            return Finding(Level.FAIL, topic, f"{path} is not writable by uid {os.geteuid()} (run doctor as the "
                           "service's user, or give that user the directory)")
        if private and mode & 0o077:
            return Finding(Level.WARN, topic, f"{path} is open to other users (mode {mode:04o}): chmod 700 {path}")
        return Finding(Level.OK, topic, f"{path} (mode {mode:04o})")
    if path.exists():
        return Finding(Level.FAIL, topic, f"{path} exists and is not a directory")
    parent = next(p for p in path.parents if p.exists())
    if parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return Finding(Level.OK, topic, f"{path} does not exist yet; clawsvc creates it at start")
    return Finding(Level.FAIL, topic, f"{path} does not exist and {parent} is not writable by uid {os.geteuid()}: "
                   "create it for the user clawsvc runs as (the system unit's StateDirectory=/RuntimeDirectory= "
                   "do that for /var/lib/clawsvc and /run/clawsvc)")


def check_dirs(doc: Doctor, config: Config) -> list[Finding]:
    findings = [_directory("state dir", config.gateway.state_dir, private=True)]
    socket = config.control.socket
    if doc.status is not None:
        findings.append(Finding(Level.OK, "control socket", f"{socket}: clawsvc is running (pid "
                                f"{doc.status.service_pid}, gateway {doc.status.state.value})"))
    elif doc.unreachable:
        findings.append(Finding(Level.WARN, "control socket", f"{socket}: {doc.unreachable}"))
    else:
        found = _directory("control socket", socket.parent, private=False)
        findings.append(Finding(found.level, found.topic, f"clawsvc is not running; {found.text}"))
    return findings


# ---------------------------------------------------------------- running it

def _run(check: Callable[[], list[Finding]], topic: str) -> list[Finding]:
    with _captured_warnings() as warnings:
        findings = check()
    return findings + [Finding(Level.WARN, topic, text) for text in warnings]


# doctor's own checks of a valid config: (topic, the preflight steps that must have passed, the check)
Check = Callable[["Doctor", Config], list[Finding]]
OWN_CHECKS: tuple[tuple[str, tuple[str, ...], Check], ...] = (
    (COMMAND, (COMMAND,), lambda doc, config: command_findings(doc.preflight, config, doc.unit_configs.get("system"))),
    ("gateway.port", (), check_port),
    ("directories", ("files", "state dir"), check_dirs),
    ("compile cache", ("compile cache",), lambda _doc, config: check_compile_cache(config)),
    ("token", ("files", "token"), check_token),
    ("keyring", (), lambda doc, _config: check_keyring(doc)),
    ("provider keys", (), check_provider_keys),
    ("openclaw.json", ("files", "state dir"), lambda _doc, config: gatewayside.check_own_config(config)),
    ("service", (), lambda doc, _config: gatewayside.check_service(doc.status)),
)


def diagnose(config_path: str | None, unit: str = "clawsvc.service") -> tuple[list[Finding], bool]:
    """(findings in report order, whether the config could be loaded); `unit` is the one whose credentials to
    check. As root, judged as the service would judge (trust.judged_as_the_service), like check-config."""
    with trust.judged_as_the_service():
        return _diagnose(config_path, unit)


def _diagnose(config_path: str | None, unit: str) -> tuple[list[Finding], bool]:
    doc = Doctor()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [Finding(Level.FAIL, "config", str(exc)),
                Finding(Level.SKIP, "gateway.command, port, token, provider keys, directories",
                        "need a valid config"),
                *_run(lambda: check_keyring(doc), "keyring"), *_run(lambda: check_units(doc), "units"),
                *_run(lambda: check_credentials(unit), "credentials")], False
    if config.source is None:
        head = Finding(Level.WARN, "config", f"no file at {default_config_path()}; using built-in defaults "
                       "(`clawsvc install` writes a commented one)")
    else:
        head = Finding(Level.OK, "config", f"{config.source} is valid")
    units = _run(lambda: check_units(doc), "units")
    with _captured_warnings() as warnings:
        doc.preflight = run_preflight(config)
    checked = doc.preflight.findings + [Finding(Level.WARN, "preflight", text) for text in warnings]
    ask_service(doc, config)
    own = [finding for topic, needs, check in OWN_CHECKS if not doc.preflight.refused.intersection(needs)
           for finding in _run(functools.partial(check, doc, config), topic)]
    return [head, *checked, *own, *units, *_run(lambda: gatewayside.check_start_limit(unit), "units"),
            *_run(lambda: check_credentials(unit), "credentials")], True


def summary(findings: list[Finding]) -> str:
    problems = sum(f.level is Level.FAIL for f in findings)
    warnings = sum(f.level is Level.WARN for f in findings)
    counts = f"{problems or 'no'} problem{'s' * (problems != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    return f"{counts}: fix the FAIL lines above" if problems else counts


def main(args: argparse.Namespace) -> int:
    if getattr(args, "fix", False) and (code := gatewayside.fix(args, sys.stdout)) is not None:
        return code
    findings, config_valid = diagnose(args.config, unit_name(getattr(args, "instance", None)))
    for finding in findings:
        print(finding.line())
    print(summary(findings))
    if not config_valid:
        return exitcodes.CONFIG
    return exitcodes.FAIL if any(f.level is Level.FAIL for f in findings) else exitcodes.OK
