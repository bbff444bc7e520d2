"""`python -m bench peers [--rounds N]`: clawsvc against the gateway under systemd directly, in one booted guest.

Variants (same gateway, same user, same quiet env, one running at a time, the order rotated every round):
(a) Type=simple, Restart=always, RestartSec=0; (b) OpenClaw's own unit policy, RestartSec=5; (c) the shipped
clawsvc.service as `clawsvc install --system` writes it. Every figure comes from bench/guest_probe.py inside
the guest: a real handshake with the token every 20 ms until hello-ok.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from bench import guestbench
from bench.guestbench import (
    CLAWSVC_TOKEN,
    TOKEN_FILE,
    BenchGuest,
    Variant,
    bench_guest,
    describe,
    installs,
    machine,
    note_load,
    plain_unit,
    table,
    versus,
    write_samples,
)
from clawsvc.commands.runtime.links import CURRENT, point
from clawsvc.commands.runtime.provision import DEFAULT_VERSION

UPGRADE_FROM, UPGRADE_TO = "2026.9.5", DEFAULT_VERSION  # the other way the older build refuses the newer database
GATEWAY_TMP_CACHE = "/tmp/node-compile-cache"  # openclaw's own default: $TMPDIR or /tmp, + node-compile-cache

DIRECT = Variant("direct", "(a) systemd directly, RestartSec=0", "bench-direct.service", 18801, TOKEN_FILE)
OPENCLAW = Variant("openclaw", "(b) OpenClaw's unit policy, RestartSec=5", "bench-openclaw.service", 18802,
                   TOKEN_FILE)
CLAWSVC = Variant("clawsvc", "(c) clawsvc.service", "clawsvc.service", 18789, CLAWSVC_TOKEN)
VARIANTS = (DIRECT, OPENCLAW, CLAWSVC)
DIRECT_STATE = "/var/lib/bench-direct/openclaw"
NO_COMPARE = frozenset({"cold_minus_warm"})
NO_RATIO = frozenset({"active_gap"})  # a gap near zero: only the difference means anything

ROWS = {
    "start": "`systemctl start` → first usable hello-ok",
    "active_gap": "unit `active` before the gateway is usable (hello-ok - ActiveEnterTimestamp)",
    "kill": "SIGKILL of the serving gateway process → a new gateway's hello-ok",
    "cold_start": "start with the compile cache emptied → hello-ok",
    "cold_minus_warm": "cold - warm start (same round)",
    "upgrade_cold": (f"upgrade {UPGRADE_FROM} → {UPGRADE_TO} (link switch + `systemctl restart`) → new version's "
                     "hello-ok, its compile cache cold"),
    "upgrade_warm": "same, the new version ran once before (the canary's warm-up)",
    "upgrade_cold_exec": "of which the new gateway's exec → hello-ok, cold",
    "upgrade_warm_exec": "of which the new gateway's exec → hello-ok, warm",
}


def cache_dirs(trial: dict[str, Any], variant: Variant) -> list[str]:
    """Where this variant's gateway keeps its compile cache across unit runs (guest paths); [] when that is a
    PrivateTmp= /tmp, which every unit start makes anew (always cold)."""
    if trial.get("compile_cache"):
        return [str(trial["compile_cache"])]
    if trial.get("tmpdir"):
        return [f"{trial['tmpdir']}/node-compile-cache"]
    return [] if variant is CLAWSVC else [GATEWAY_TMP_CACHE]


def one_round(bench: BenchGuest, variant: Variant, caches: dict[str, list[str]]) -> None:
    warm = bench.start(variant)
    caches[variant.key] = cache_dirs(warm, variant)
    bench.record("start", variant, warm["usable"])
    bench.record("active_gap", variant, warm["usable"] - warm["active"])
    bench.record("kill", variant, bench.probe("kill", variant)["usable"])
    bench.stop(variant.unit)
    cold = bench.probe("start", variant, *(arg for d in caches[variant.key] for arg in ("--empty", d)))
    bench.record("cold_start", variant, cold["usable"])
    bench.record("cold_minus_warm", variant, cold["usable"] - warm["usable"])
    bench.stop(variant.unit)


def fresh_old_version(bench: BenchGuest, variant: Variant, state_dir: str) -> None:
    """Stopped, state dir emptied, running UPGRADE_FROM: a newer gateway's database refuses an older build
    (exit 78 "schema newer than this build"), so every upgrade starts from state the old version wrote."""
    bench.stop(variant.unit)
    bench.guest.run("find", state_dir, "-mindepth", "1", "-delete", check=True)
    point(bench.prefix, CURRENT, UPGRADE_FROM)
    bench.start(variant)


def upgrade(bench: BenchGuest, variant: Variant, row: str, *extra: str) -> None:
    point(bench.prefix, CURRENT, UPGRADE_TO)
    trial = bench.probe("restart", variant, "--version", UPGRADE_TO, *extra)
    bench.record(row, variant, trial["usable"])
    bench.record(f"{row}_exec", variant, trial["new_exec_to_usable"])


def upgrade_round(bench: BenchGuest, variant: Variant, state_dir: str) -> None:
    """Downtime of the switch UPGRADE_FROM → UPGRADE_TO by link + `systemctl restart`: cold with the new
    version's compile cache emptied, warm after it ran once with the same cache (and flushed it on a clean
    stop), as the canary's run does. Ends stopped, on UPGRADE_TO."""
    fresh_old_version(bench, variant, state_dir)
    upgrade(bench, variant, "upgrade_cold", "--empty", f"{GATEWAY_TMP_CACHE}/openclaw/{UPGRADE_TO}")
    fresh_old_version(bench, variant, state_dir)
    upgrade(bench, variant, "upgrade_warm")
    bench.stop(variant.unit)


def markdown(samples: dict[str, Any], rounds: int, load: str, elapsed: float) -> str:
    header = ["row (n per cell)", *(v.label for v in VARIANTS)]
    rows = []
    for key, title in ROWS.items():
        by_variant = samples.get(key, {})
        if not by_variant:
            continue
        base = by_variant.get(DIRECT.key, [])
        cells = []
        for variant in VARIANTS:
            values = by_variant.get(variant.key, [])
            if not values:
                cells.append("-")
                continue
            compare = "" if variant is DIRECT or key in NO_COMPARE else \
                f"; vs (a) {versus(values, base, ratio=key not in NO_RATIO)}"
            cells.append(f"{describe(values)}{compare}")
        n = max(len(v) for v in by_variant.values())
        rows.append([f"{title} (n={n})", *cells])
    return (table(header, rows) + f"\n\nmedian (min..max) in seconds, {rounds} interleaved round(s) in one booted "
            f"systemd 252 guest; {load}; whole run {elapsed / 60:.0f} min.")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = guestbench.arguments("python -m bench peers", __doc__)
    parser.add_argument("--no-upgrade", action="store_true", help="skip the upgrade rows")
    return guestbench.parse(parser, argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    meta: dict[str, Any] = {**machine(), "rounds": args.rounds}
    versions = (DEFAULT_VERSION,) if args.no_upgrade else (DEFAULT_VERSION, UPGRADE_FROM)
    found = installs(versions)
    units = {DIRECT.unit: plain_unit("bench-direct", DIRECT.port, found[0].node, 0),
             OPENCLAW.unit: plain_unit("bench-openclaw", OPENCLAW.port, found[0].node, 5)}
    started = time.monotonic()
    caches: dict[str, list[str]] = {}
    samples: dict[str, Any] = {}
    try:
        with bench_guest(units, found) as bench:
            samples = bench.samples
            rounds(bench, args, caches)
    finally:  # a failed trial still leaves the samples taken so far, and the table of them
        elapsed = time.monotonic() - started
        meta["caches"] = caches
        load = note_load(meta)
        path = write_samples("peers", {**meta, "elapsed_s": elapsed}, samples, args.json)
        print(markdown(samples, args.rounds, load, elapsed))
        print(f"\nraw samples: {path}", file=sys.stderr)
    return 0


def rounds(bench: BenchGuest, args: argparse.Namespace, caches: dict[str, list[str]]) -> None:
    for variant in VARIANTS:  # warm-up: state dirs, clawsvc's generated token, a flushed compile cache
        bench.start(variant)
        bench.stop(variant.unit)
    for index in range(args.rounds):
        order = VARIANTS[index % len(VARIANTS):] + VARIANTS[:index % len(VARIANTS)]
        for variant in order:
            print(f"peers: round {index + 1}/{args.rounds}: {variant.label}", file=sys.stderr, flush=True)
            one_round(bench, variant, caches)
        if not args.no_upgrade:
            print(f"peers: round {index + 1}/{args.rounds}: upgrade under {DIRECT.label}", file=sys.stderr, flush=True)
            upgrade_round(bench, DIRECT, DIRECT_STATE)
