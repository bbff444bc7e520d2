"""`python -m bench hardening [--rounds N]`: what clawsvc.service's sandbox costs per gateway start, and which
setting it is. The gateway under a plain Type=simple unit, then with every sandboxing line of the shipped unit
copied in, then with one group of those lines left out at a time; `systemctl start` → hello-ok for each,
rounds interleaved in one booted guest (see bench/peers.py for the probe).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import guestbench
from bench.guestbench import (
    TOKEN_FILE,
    Variant,
    bench_guest,
    describe,
    installs,
    machine,
    note_load,
    plain_unit,
    sandbox_settings,
    table,
    versus,
    write_samples,
)
from clawsvc.gateway.compile_cache import NO_RESPAWN_ENV

# Groups of the shipped unit's sandboxing keys; a key in no group lands in "other".
GROUPS: dict[str, frozenset[str]] = {
    "PrivateTmp=": frozenset({"PrivateTmp"}),
    "SystemCallFilter= (+Architectures, ErrorNumber)": frozenset({
        "SystemCallFilter", "SystemCallArchitectures", "SystemCallErrorNumber"}),
    "file-system and kernel views (ProtectSystem/Home/Proc/Kernel*/ControlGroups/Clock/Hostname, "
    "PrivateDevices/IPC/Mounts)": frozenset({
        "ProtectSystem", "ProtectHome", "ProtectProc", "ProtectKernelTunables", "ProtectKernelModules",
        "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "PrivateDevices",
        "PrivateIPC", "PrivateMounts"}),
    "Restrict*, capabilities, LockPersonality, RemoveIPC, LimitNOFILE": frozenset({
        "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "RemoveIPC",
        "LockPersonality", "MemoryDenyWriteExecute", "NoNewPrivileges", "CapabilityBoundingSet",
        "AmbientCapabilities", "LimitNOFILE"}),
}
# Without PrivateTmp=, ProtectSystem=strict leaves /tmp read-only, where the gateway keeps its locks and logs.
TMP_WRITABLE = "ReadWritePaths=/tmp"
BASE_PORT = 18810
# What clawsvc gives its gateway (clawsvc/gateway/compile_cache.py): a cache that outlives the unit's /tmp, and
# openclaw's "already re-executed" marker so its launcher does not wrap the gateway in a second node process.
KEPT_CACHE = ("CacheDirectory=%N", "Environment=NODE_COMPILE_CACHE=/var/cache/%N",
              *(f"Environment={key}={value}" for key, value in NO_RESPAWN_ENV.items()))


@dataclass(frozen=True)
class Setup:
    key: str
    label: str
    lines: tuple[str, ...]


def group_of(key: str) -> str:
    return next((name for name, keys in GROUPS.items() if key in keys), "other")


def setups(settings: Sequence[tuple[str, str]]) -> list[Setup]:
    """plain; full sandbox; full minus each group present; full with the compile cache moved off /tmp."""
    full = tuple(f"{key}={value}" for key, value in settings)
    present = list(dict.fromkeys(group_of(key) for key, _ in settings))
    out = [Setup("plain", "plain unit (a)", ()), Setup("full", "plain + all of clawsvc.service's sandbox", full)]
    for index, group in enumerate(present, 1):
        kept = tuple(f"{k}={v}" for k, v in settings if group_of(k) != group)
        if group == "PrivateTmp=" and any(k == "ProtectSystem" and v == "strict" for k, v in settings):
            kept += (TMP_WRITABLE,)
        out.append(Setup(f"without{index}", f"sandbox without {group}", kept))
    out.append(Setup("cachedir", "all of the sandbox, compile cache in CacheDirectory= (as clawsvc sets it)",
                     (*full, *KEPT_CACHE)))
    return out


def variants(chosen: Sequence[Setup]) -> list[Variant]:
    return [Variant(s.key, s.label, f"bench-h-{s.key}.service", BASE_PORT + i, TOKEN_FILE)
            for i, s in enumerate(chosen)]


def markdown(chosen: Sequence[Setup], by_variant: dict[str, list[float]], rounds: int, load: str,
             elapsed: float) -> str:
    base = by_variant.get("plain", [])
    full = by_variant.get("full", [])
    rows = [[s.label, describe(by_variant.get(s.key, [])), versus(by_variant.get(s.key, []), base),
             versus(by_variant.get(s.key, []), full)] for s in chosen]
    header = ["unit", "`systemctl start` → hello-ok, median (min..max)", "vs plain", "vs full sandbox"]
    return (table(header, rows) + f"\n\n{rounds} interleaved round(s), n={rounds} per row, one booted systemd 252 "
            f"guest, the same gateway and user; {load}; whole run {elapsed / 60:.0f} min.")


def parse_args(argv: list[str]) -> argparse.Namespace:
    return guestbench.parse(guestbench.arguments("python -m bench hardening", __doc__), argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    meta: dict[str, Any] = {**machine(), "rounds": args.rounds}
    found = installs()
    chosen = setups(sandbox_settings())
    runs = variants(chosen)
    units = {v.unit: plain_unit(v.unit.removesuffix(".service"), v.port, found[0].node, 0, s.lines)
             for v, s in zip(runs, chosen, strict=True)}
    meta["units"] = {v.key: {"label": s.label, "lines": list(s.lines)} for v, s in zip(runs, chosen, strict=True)}
    started = time.monotonic()
    with bench_guest(units, found) as bench:
        for variant in runs:  # warm-up: state dir, a flushed compile cache where one survives the unit
            bench.start(variant)
            bench.stop(variant.unit)
        for index in range(args.rounds):
            for variant in runs[index % len(runs):] + runs[:index % len(runs)]:
                print(f"hardening: round {index + 1}/{args.rounds}: {variant.label}", file=sys.stderr, flush=True)
                bench.record("start", variant, bench.start(variant)["usable"])
                bench.stop(variant.unit)
        samples = bench.samples
    elapsed = time.monotonic() - started
    load = note_load(meta)
    path = write_samples("hardening", {**meta, "elapsed_s": elapsed}, samples, args.json)
    print(markdown(chosen, samples.get("start", {}), args.rounds, load, elapsed))
    print(f"\nraw samples: {path}", file=sys.stderr)
    return 0
