"""Doctor's checks of what clawsvc keeps on disk for the gateway: the encrypted credentials `clawsvc keys`
stored for a unit, and the Node compile cache (judged as `run` would judge it)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from clawsvc import trust
from clawsvc.commands.doctor.findings import Finding, Level
from clawsvc.config import Config
from clawsvc.gateway import compile_cache
from clawsvc.secrets import credstore


def _credential_file(name: str, path: Path) -> Finding | None:
    """A problem with one stored credential file: its owner and mode, and (as root) whether it decrypts."""
    again = f"store it again: clawsvc keys set {credstore.key_name(name)} --store credential"
    try:
        found = path.lstat()
    except OSError as exc:
        return Finding(Level.FAIL, "credentials", f"cannot inspect {path}: {exc.strerror}; {again}")
    mode = stat.S_IMODE(found.st_mode)
    if found.st_uid != 0 or mode & 0o077:
        return Finding(Level.FAIL, "credentials", f"{path} is owned by uid {found.st_uid} with mode {mode:04o}: "
                       f"chown root:root {path} && chmod 600 {path}")
    if os.geteuid() != 0:
        return None
    try:
        why = credstore.decrypts(name, path)
    except credstore.CredstoreError as exc:
        return Finding(Level.WARN, "credentials", f"{path} not test-decrypted: {exc}")
    if why:
        return Finding(Level.FAIL, "credentials", f"{path} does not decrypt as credential {name} ({why}); {again}")
    return None


def check_credentials(unit: str) -> list[Finding]:
    """The encrypted credentials `clawsvc keys` stored for the unit: every drop-in line has its file and every
    file its line, the files are root's alone and (as root) each decrypts under its name. No value is shown."""
    try:
        files = credstore.stored_credentials(unit)
    except credstore.CredstoreError as exc:
        return [Finding(Level.SKIP, "credentials", f"{exc}")]
    lines, dropin = credstore.dropin_lines(unit), credstore.dropin_path(unit)
    directory = credstore.credential_dir(unit)
    if not files and not lines:
        return [Finding(Level.OK, "credentials", f"none stored for {unit} in {directory}")]
    findings = []
    for name, source in lines.items():
        if name not in files or source != str(directory / name):
            findings.append(Finding(Level.FAIL, "credentials", f"{dropin} loads {name} from {source}, which "
                                    f"clawsvc keys did not store: systemd will refuse to start {unit}; run "
                                    f"`clawsvc keys delete {credstore.key_name(name)}` to drop the line"))
    for name, path in files.items():
        if name not in lines:
            findings.append(Finding(Level.FAIL, "credentials", f"{path} is not loaded by {dropin}: "
                                    f"store it again (clawsvc keys set {credstore.key_name(name)} --store "
                                    "credential) or delete it (clawsvc keys delete)"))
        problem = _credential_file(name, path)
        if problem is not None:
            findings.append(problem)
    if not findings:
        checked = "; each decrypts" if os.geteuid() == 0 else ""
        findings.append(Finding(Level.OK, "credentials", f"{', '.join(files)} for {unit} in {directory}, loaded "
                                f"by {dropin}{checked}"))
    return findings


def _cache_files(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def check_compile_cache(config: Config) -> list[Finding]:
    """gateway.compile_cache judged as `run` would (as root: as the service user), and whether it is warm."""
    topic = "compile cache"
    if compile_cache.ENV in config.gateway.env:
        return [Finding(Level.OK, topic, f"{compile_cache.ENV} set by gateway.env "
                        f"({config.gateway.env[compile_cache.ENV]}); clawsvc leaves it to you")]
    path = compile_cache.compile_cache_dir(config)
    if path is None:
        return [Finding(Level.OK, topic, "off (gateway.compile_cache: false): each gateway start compiles openclaw "
                        "again")]
    try:
        with trust.judged_as_the_service():
            found = trust.check_dir(path, "gateway.compile_cache")
    except trust.TrustError as exc:
        return [Finding(Level.FAIL, topic, str(exc))]
    except OSError as exc:
        return [Finding(Level.WARN, topic, f"cannot check {path}: {exc.strerror}; the gateway may start without "
                        "a persistent compile cache")]
    if found is not None:
        files = _cache_files(found)
        warmth = f"warm, {files} files" if files else "empty: the next gateway start fills it"
        return [Finding(Level.OK, topic, f"{path} ({warmth})")]
    parent = next(p for p in path.parents if p.exists())
    if os.access(parent, os.W_OK | os.X_OK):
        return [Finding(Level.OK, topic, f"{path} does not exist yet; clawsvc creates it at the gateway's start")]
    return [Finding(Level.WARN, topic, f"{path} cannot be created: {parent} is not writable by uid {os.geteuid()}; "
                    "the gateway would start without a persistent compile cache (slower starts)")]
