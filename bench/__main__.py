"""`python -m bench [--quick] [--only NAMES] [--no-write] [--gateway real|double]`;
`python -m bench peers|hardening [--rounds N]` (in a booted systemd guest; print markdown, write raw JSON)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import events, faults, footprint, ownstart, report, restarts, rpc, soak, startup
from bench.common import REPO, Context, Row, Section

BENCHES: dict[str, tuple[str, Callable[[Context], Section]]] = {
    "start": ("start overhead", startup.run),
    "own-start": ("clawsvc's own start", ownstart.run),
    "crash": ("crash recovery", faults.crash),
    "restarts": ("restart-gateway: safe vs --force", restarts.run),
    "hang": ("hang detection", faults.hang),
    "rpc": ("RPC latency and throughput", rpc.run),
    "events": ("event dispatch", events.run),
    "footprint": ("footprint", footprint.run),
    "soak": ("restart soak", soak.run),
}

GUEST_BENCHES = ("peers", "hardening")  # own command lines and output: they compare units, not clawsvc vs bare


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repetitions: a smoke test, not a measurement")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated subset of: {','.join(BENCHES)}")
    parser.add_argument("--no-write", action="store_true", help="print the table only; leave BENCHMARKS.md alone")
    parser.add_argument("--gateway", choices=("real", "double"),
                        help="gateway for start/crash/hang/rpc/footprint (default: real; double with --quick); "
                             "events and soak always use the double")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    args.names = names
    args.gateway = args.gateway or ("double" if args.quick else "real")
    return args


def failed(name: str, exc: BaseException) -> Section:
    section = Section(name, f"{BENCHES[name][0]}: FAILED")
    section.add(Row("benchmark did not complete", f"{type(exc).__name__}", target="completes", met=False),
                why_missed=str(exc).splitlines()[0] if str(exc) else "")
    return section


def guest_bench(name: str) -> Callable[[list[str]], int]:
    if name == "peers":
        from bench import peers
        return peers.main
    from bench import hardening
    return hardening.main


def main(argv: list[str]) -> int:
    if argv and argv[0] in GUEST_BENCHES:
        return guest_bench(argv[0])(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("websocket").setLevel(logging.CRITICAL)  # the 10 ms prober's 1013 closes are expected
    ctx = Context(quick=args.quick, gateway=args.gateway)
    sections: list[Section] = []
    started = time.monotonic()
    for name in args.names:
        title, bench = BENCHES[name]
        print(f"bench: {title} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            sections.append(bench(ctx))
        except Exception as exc:  # report it and go on with the others
            traceback.print_exc()
            sections.append(failed(name, exc))
        print(f"bench: {title} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    print(report.table(sections))
    if not args.no_write:
        command = "python -m bench " + " ".join(argv) if argv else "python -m bench"
        kept = report.kept_part(Path(args.output))
        with open(args.output, "w") as out:
            out.write(report.markdown(sections, command.strip(), elapsed) + kept)
        print(f"\nwrote {args.output}", file=sys.stderr)
    return 1 if any(s.title.endswith("FAILED") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
