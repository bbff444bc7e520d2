"""`python -m bench` works end to end (against the double): a smoke test of the script, not a measurement."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"[\d,.]+"


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.bench
def test_quick_events_and_rpc_print_every_figure() -> None:
    done = run_bench("--quick", "--only", "events,rpc", "--no-write")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(rf"events dispatched to on_event\s+{NUMBER} /s\s+{NUMBER} /s bare\s+{NUMBER}x", out), out
    lost = re.search(r"events lost\s+(\d+)\s+(\d+) bare", out)
    assert lost is not None, out
    assert lost.group(1) == "0", f"clawsvc's connection lost events the bare loop got:\n{out}"
    assert re.search(rf"latency p50\s+{NUMBER} µs\s+{NUMBER} µs bare\s+{NUMBER}x", out), out
    for threads in ("1 thread", "8 threads", "32 threads"):
        assert re.search(rf"throughput, {threads}\s+{NUMBER} calls/s", out), out
    assert "FAILED" not in out


@pytest.mark.bench
def test_writes_markdown_with_machine_and_table(tmp_path: Path) -> None:
    target = tmp_path / "BENCHMARKS.md"
    repo_copy = REPO / "BENCHMARKS.md"
    before = repo_copy.read_bytes() if repo_copy.exists() else None
    done = run_bench("--quick", "--only", "events", "--output", str(target))
    assert done.returncode == 0, done.stderr[-3000:]
    text = target.read_text()
    for needle in ("| cpus |", "| cpu model |", "| python |", "| node |", "| date |", "## Targets missed",
                   "events dispatched to on_event"):
        assert needle in text, f"{needle!r} missing from BENCHMARKS.md:\n{text}"
    assert (repo_copy.read_bytes() if repo_copy.exists() else None) == before, "--output wrote the repo copy"


@pytest.mark.parametrize("args", [("--only", "nonsense"), ("--only", "rpc,bogus")])
def test_unknown_benchmark_is_a_usage_error(args: tuple[str, ...]) -> None:
    done = run_bench(*args, "--no-write", timeout=60)
    assert done.returncode == 2
    assert "unknown benchmark" in done.stderr


# ---------------------------------------------------------------- the guest benches' pure parts (no guest booted)

def test_sandbox_settings_are_the_shipped_units_hardening_only() -> None:
    from bench.guestbench import sandbox_settings
    settings = sandbox_settings()
    keys = [key for key, _ in settings]
    assert ("PrivateTmp", "yes") in settings and ("LimitNOFILE", "65536") in settings
    assert keys.count("SystemCallFilter") >= 2, "repeated filter lines are all kept, in order"
    assert not {"ExecStart", "User", "Type", "Restart", "StateDirectory", "Environment"} & set(keys)


def test_hardening_setups_leave_out_one_group_each_and_keep_tmp_writable() -> None:
    from bench.guestbench import sandbox_settings
    from bench.hardening import GROUPS, TMP_WRITABLE, group_of, setups
    settings = sandbox_settings()
    made = {setup.key: setup for setup in setups(settings)}
    full = set(made["full"].lines)
    assert made["plain"].lines == () and len(full) == len(settings)
    assert {group_of(key) for key, _ in settings} <= {*GROUPS, "other"}
    without = [s for s in made.values() if s.key.startswith("without")]
    assert len(without) == len({group_of(key) for key, _ in settings})
    no_tmp = next(s for s in without if "PrivateTmp=" in s.label)
    assert "PrivateTmp=yes" not in no_tmp.lines and TMP_WRITABLE in no_tmp.lines
    assert set(no_tmp.lines) - {TMP_WRITABLE} == full - {"PrivateTmp=yes"}


def test_plain_unit_runs_the_stable_entry_without_the_token_on_argv(tmp_path: Path) -> None:
    from bench.guestbench import plain_unit
    text = plain_unit("bench-x", 18801, tmp_path / "node", 5, ("PrivateTmp=yes",))
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    assert "/opt/bench-gateway/current/node_modules/openclaw/openclaw.mjs gateway run --port 18801" in exec_start
    assert "TOKEN" not in exec_start and "EnvironmentFile=/etc/bench/gateway.env" in text
    assert "RestartSec=5\n" in text and "Restart=always\n" in text and text.rstrip().endswith("PrivateTmp=yes")


def test_summaries_compare_medians_with_the_baseline() -> None:
    from bench.guestbench import describe, versus
    assert describe([3.0, 1.0, 2.0]) == "2.00 s (1.00..3.00)"
    assert versus([3.0, 3.0], [2.0, 2.0]) == "+1.00 s, 1.50x"
    assert describe([]) == versus([], [1.0]) == "n/a"


def test_cold_start_empties_where_the_gateway_keeps_its_compile_cache() -> None:
    from bench.peers import CLAWSVC, DIRECT, cache_dirs
    named = {"compile_cache": "/var/cache/clawsvc/ncc", "tmpdir": "/x"}
    assert cache_dirs(named, CLAWSVC) == ["/var/cache/clawsvc/ncc"]
    assert cache_dirs({"tmpdir": "/var/cache/x"}, DIRECT) == ["/var/cache/x/node-compile-cache"]
    assert cache_dirs({}, DIRECT) == ["/tmp/node-compile-cache"]
    assert cache_dirs({}, CLAWSVC) == [], "under PrivateTmp= every unit start has a fresh /tmp already"


def test_peers_table_compares_each_variant_with_the_direct_unit() -> None:
    from bench.peers import markdown
    samples = {"start": {"direct": [10.0, 12.0], "openclaw": [11.0, 11.0], "clawsvc": [13.0, 13.0]},
               "active_gap": {"direct": [9.0, 11.0], "clawsvc": [0.02, 0.04]}}
    text = markdown(samples, 2, "quiet", 60.0)
    start = next(line for line in text.splitlines() if line.startswith("| `systemctl start`"))
    assert start.endswith("| 11.00 s (10.00..12.00) | 11.00 s (11.00..11.00); vs (a) +0.00 s, 1.00x "
                          "| 13.00 s (13.00..13.00); vs (a) +2.00 s, 1.18x |"), start
    gap = next(line for line in text.splitlines() if line.startswith("| unit `active`"))
    assert gap.endswith("| - | 0.03 s (0.02..0.04); vs (a) -9.97 s |"), gap
    assert "SIGKILL" not in text, "rows without samples are left out"


@pytest.mark.parametrize("bench", ["peers", "hardening"])
def test_guest_benches_refuse_zero_rounds_before_booting_anything(bench: str) -> None:
    done = run_bench(bench, "--rounds", "0", timeout=60)
    assert done.returncode == 2
    assert "--rounds must be at least 1" in done.stderr


def test_a_rerun_keeps_what_follows_the_marker(tmp_path) -> None:
    from bench import report

    target = tmp_path / "BENCHMARKS.md"
    assert report.kept_part(target) == ""
    target.write_text("# old generated part\n\n" + report.KEPT_MARKER + "\n## Peers\nrow\n")
    assert report.kept_part(target) == "\n" + report.KEPT_MARKER + "\n## Peers\nrow\n"
    target.write_text("# generated only\n")
    assert report.kept_part(target) == ""
