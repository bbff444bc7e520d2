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
