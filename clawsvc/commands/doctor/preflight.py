"""Doctor's view of preflight: each of its steps (what check-config and run check) a line of its own, and what
its gateway.command step found out, so that doctor judges exactly as they do and runs nothing more."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clawsvc.commands.doctor.findings import Finding, Level
from clawsvc.commands.install import plan as install
from clawsvc.config import Config, ConfigError
from clawsvc.gateway.command import Vetted
from clawsvc.service.preflight import COMMAND, STEPS


@dataclass
class Preflight:
    findings: list[Finding] = field(default_factory=list)  # a FAIL for each step that refuses
    refused: set[str] = field(default_factory=set)  # the topics of those steps
    vetted: Vetted | None = None  # gateway.command as its step checked it


def run_preflight(config: Config) -> Preflight:
    found = Preflight()
    for topic, step in STEPS:
        try:
            result = step(config)
        except ConfigError as exc:
            found.refused.add(topic)
            found.findings.append(Finding(Level.FAIL, topic, str(exc)))
            continue
        if isinstance(result, Vetted):
            found.vetted = result
    if not found.refused:
        found.findings.append(Finding(Level.OK, "preflight", "the checks of check-config and run pass"))
    return found


def command_findings(found: Preflight, config: Config, system_unit_config: Path | None) -> list[Finding]:
    """What the gateway.command step found out (it ran nothing more privileged than the files' owners), and
    whether the system unit, when it runs this config, can see those files. Nothing when that step refused."""
    vetted = found.vetted
    if vetted is None:
        return []
    if vetted.facts is not None and vetted.entry is not None:
        facts = vetted.facts
        findings = [Finding(Level.OK, COMMAND, f"node {facts.node_version} ({vetted.node}) runs openclaw "
                            f"{facts.gateway_version} ({vetted.entry}), which needs node {facts.needs}")]
    elif vetted.entry is not None:
        findings = [Finding(Level.OK, COMMAND, f"{vetted.node} {vetted.entry} (versions not checked)")]
    else:
        findings = [Finding(Level.OK, COMMAND, f"{vetted.argv[0]} found")]
    if config.source is not None and system_unit_config == config.source:
        findings += [Finding(Level.FAIL, COMMAND, f"{path} is not visible to the system unit "
                             "(ProtectHome=yes, PrivateTmp=yes hide /home, /root and /tmp); "
                             "run `clawsvc gateway-install` as root to get it under /opt")
                     for path in install.hidden_paths(vetted.argv)]
    return findings
