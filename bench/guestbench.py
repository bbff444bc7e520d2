"""What the peer and hardening benches share: one booted guest systemd with clawsvc installed, plain gateway
units to compare with it, the in-guest probe (bench/guest_probe.py), and the raw-samples JSON + summaries.

All variants run the same gateway: node from the test cache and PREFIX/current/.../openclaw.mjs, where the host
directory PREFIX (bound read-only at /opt/bench-gateway) holds openclaw-V -> the cache's version dirs and
`current` -> one of them (switched with gateway_links.point for the upgrade rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, realgw
from clawsvc.commands.runtime.links import CURRENT, ENTRY, VERSION_DIR_PREFIX, point
from clawsvc.commands.runtime.provision import DEFAULT_VERSION, Installation

sys.path.insert(0, str(REPO / "tests"))  # systemd_guest imports its neighbours as top-level modules
from systemd_guest import GUEST_OPT, Guest, booted_systemd

GUEST_PREFIX = Path("/opt/bench-gateway")
PROBE = GUEST_OPT / "src" / "bench" / "guest_probe.py"
PYTHON = GUEST_OPT / "bin" / "python"
TOKEN_FILE = "/etc/bench/token"  # root-only, for the probe; the plain units read /etc/bench/gateway.env
CLAWSVC_CONFIG = "/etc/clawsvc/clawsvc.yaml"
CLAWSVC_TOKEN = "/var/lib/clawsvc/openclaw/gateway-token"  # the token clawsvc generates on its first start
CLAWSVC_PORT = 18789
TRIAL_TIMEOUT = 400.0
RESULTS = Path("/var/tmp/clawsvc-bench")  # raw samples, one JSON per run (outside the checkout)
# The shipped unit's [Service] keys that are not sandboxing: how it runs, restarts, and where its dirs are.
NOT_SANDBOX = frozenset({
    "Type", "NotifyAccess", "ExecStart", "ExecReload", "TimeoutStartSec", "WatchdogSec", "KillMode",
    "TimeoutStopSec", "Restart", "RestartSec", "RestartPreventExitStatus", "User", "Group", "Environment",
    "StateDirectory", "StateDirectoryMode", "RuntimeDirectory", "RuntimeDirectoryMode", "RuntimeDirectoryPreserve",
    "ConfigurationDirectory", "ConfigurationDirectoryMode", "CacheDirectory", "CacheDirectoryMode", "UMask",
})


@dataclass(frozen=True)
class Variant:
    key: str          # short name in the JSON
    label: str        # as printed
    unit: str
    port: int
    token_file: str
    cache_dirs: tuple[str, ...] = ()  # guest paths that hold this variant's compile cache between unit runs

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


def sandbox_settings(unit_text: str | None = None) -> list[tuple[str, str]]:
    """(key, value) of every sandboxing line in the shipped clawsvc.service, in order (repeated keys kept)."""
    text = unit_text if unit_text is not None else (REPO / "units" / "clawsvc.service").read_text()
    settings, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if key not in NOT_SANDBOX:
                settings.append((key, value))
    return settings


def gateway_command(node: Path) -> tuple[str, str]:
    return (str(node), str(GUEST_PREFIX / CURRENT / ENTRY))


def plain_unit(name: str, port: int, node: Path, restart_sec: float, extra: Sequence[str] = ()) -> str:
    """The gateway under systemd directly, Type=simple, as user clawsvc, state under /var/lib/NAME."""
    state = f"/var/lib/{name}"
    env = {**realgw.QUIET_ENV, "HOME": state, "OPENCLAW_STATE_DIR": f"{state}/openclaw",
           "OPENCLAW_CONFIG_PATH": f"{state}/openclaw/openclaw.json"}
    argv = [*gateway_command(node), "gateway", "run", "--port", str(port), "--bind", "loopback", "--auth", "token",
            "--allow-unconfigured"]
    lines = ["[Unit]", f"Description=bench: openclaw gateway under systemd directly ({name})", "",
             "[Service]", "Type=simple", f"ExecStart={' '.join(argv)}", "Restart=always", f"RestartSec={restart_sec:g}",
             "User=clawsvc", "Group=clawsvc", f"StateDirectory={name} {name}/openclaw",
             "StateDirectoryMode=0700", "EnvironmentFile=/etc/bench/gateway.env",
             *(f"Environment={key}={value}" for key, value in env.items()), *extra, ""]
    return "\n".join(lines)


def clawsvc_config(node: Path) -> str:
    env = "".join(f'    {key}: "{value}"\n' for key, value in realgw.QUIET_ENV.items())
    return (f"gateway:\n  command: {json.dumps(list(gateway_command(node)))}\n  port: {CLAWSVC_PORT}\n"
            f"  start_timeout: 240s\n  env:\n{env}")


def link_prefix(prefix: Path, installs: Sequence[Installation]) -> None:
    """PREFIX/openclaw-V -> the cache's version dir for each install; PREFIX/current -> the first one."""
    prefix.chmod(0o755)
    for install in installs:
        (prefix / f"{VERSION_DIR_PREFIX}{install.version}").symlink_to(install.version_path)
    point(prefix, CURRENT, installs[0].version)


@dataclass
class BenchGuest:
    guest: Guest
    prefix: Path  # host side of /opt/bench-gateway
    samples: dict[str, Any] = field(default_factory=dict)

    def probe(self, action: str, variant: Variant, *extra: str) -> dict[str, Any]:
        done = self.guest.run(str(PYTHON), str(PROBE), action, variant.unit, variant.url, variant.token_file,
                              *extra, timeout=TRIAL_TIMEOUT)
        if done.returncode != 0:
            tail = self.guest.journal(variant.unit)[-3000:]
            raise RuntimeError(f"probe {action} {variant.unit} exited {done.returncode}: "
                               f"{done.stderr.strip()[-1500:]}\njournal:\n{tail}")
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))

    def stop(self, unit: str) -> None:
        self.guest.systemctl("stop", unit, timeout=180)
        self.guest.systemctl("reset-failed", unit)

    def start(self, variant: Variant) -> dict[str, Any]:
        """Start from stopped and wait for a usable gateway (the probe's start trial)."""
        return self.probe("start", variant)

    def record(self, row: str, variant: Variant, value: float) -> None:
        self.samples.setdefault(row, {}).setdefault(variant.key, []).append(value)
        print(f"  {row} {variant.key}: {value:.2f} s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def bench_guest(units: dict[str, str], installs: Sequence[Installation]) -> Iterator[BenchGuest]:
    """Boot a guest with `units`, clawsvc installed (`clawsvc install --system`, not started) and the gateway
    cache and link prefix bound in; always halt it."""
    scratch = Path(tempfile.mkdtemp(prefix="clawsvc-bench-"))
    prefix = scratch / "prefix"
    prefix.mkdir()
    (scratch / "guest").mkdir()
    link_prefix(prefix, installs)
    token = secrets.token_urlsafe(32)  # throwaway, for the plain units only; never printed
    node = installs[0].node
    cache_root = realgw.cache_dir()
    files = {CLAWSVC_CONFIG: clawsvc_config(node), "/etc/bench/gateway.env": f"OPENCLAW_GATEWAY_TOKEN={token}\n",
             TOKEN_FILE: token + "\n"}
    try:
        with booted_systemd(scratch / "guest", units=units, files=files,
                            binds={cache_root: cache_root, prefix: GUEST_PREFIX}) as guest:
            for path in ("/etc/bench/gateway.env", TOKEN_FILE):
                guest.path(path).chmod(0o600)
            guest.run("clawsvc", "install", "--system", "--no-start", check=True)
            guest.systemctl("daemon-reload", check=True)
            yield BenchGuest(guest, prefix)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def installs(versions: Sequence[str] = (DEFAULT_VERSION,)) -> list[Installation]:
    return [realgw.provision(version) for version in versions]


# ------------------------------------------------------------------ results

def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "median": statistics.median(values), "min": min(values), "max": max(values)}


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def describe(values: Sequence[float]) -> str:
    """`median (min..max)` of durations in seconds."""
    if not values:
        return "n/a"
    s = summary(values)
    return f"{seconds(s['median'])} ({s['min']:.2f}..{s['max']:.2f})"


def versus(values: Sequence[float], base: Sequence[float], ratio: bool = True) -> str:
    """Difference of medians (and their ratio), against the baseline from the same run."""
    if not values or not base:
        return "n/a"
    mine, theirs = statistics.median(values), statistics.median(base)
    ratio_text = f", {mine / theirs:.2f}x" if ratio and theirs > 0 and mine >= 0 else ""
    return f"{mine - theirs:+.2f} s{ratio_text}"


def write_samples(name: str, meta: dict[str, Any], samples: dict[str, Any], output: Path | None) -> Path:
    target = output or RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"bench": name, **meta, "samples": samples}, indent=2) + "\n")
    return target


def machine() -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg()}


def note_load(meta: dict[str, Any]) -> str:
    start, end = meta["loadavg_start"], os.getloadavg()
    meta["loadavg_end"] = end
    return (f"load average {start[0]:.2f} at the start, {end[0]:.2f}/{end[1]:.2f}/{end[2]:.2f} at the end "
            f"on {meta['cpus']} cpus")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def arguments(prog: str, description: str | None) -> argparse.ArgumentParser:
    """The options every guest bench takes; add its own, then `parse`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="where to write the raw samples (default: under /var/tmp)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args
