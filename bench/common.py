"""What every benchmark shares: result rows, statistics, /proc readings, the gateway backends."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import realgw  # noqa: E402  (the test helpers live in the repo, not in the package)
from tests.double import double_command  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ results

@dataclass
class Row:
    """One figure: clawsvc's value next to its baseline, and whether it meets its target (None: no target)."""

    metric: str
    value: str
    baseline: str = ""
    compare: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Section:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # how it was measured, where the time goes
    missed: list[str] = field(default_factory=list)  # one line per missed target, with the reason

    def add(self, row: Row, why_missed: str = "") -> None:
        self.rows.append(row)
        if row.met is False:
            self.missed.append(f"{row.metric}: {row.value} against a target of {row.target}. {why_missed}".strip())


# ------------------------------------------------------------------ statistics

def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if abs(seconds) >= 0.1 else f"{seconds * 1000:.1f} ms"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def signed_ms(seconds: float) -> str:
    return f"{seconds * 1000:+.0f} ms"


def spread(values: Sequence[float]) -> str:
    """`min..max` of a few durations, for the notes."""
    return f"{min(values) * 1000:.0f}..{max(values) * 1000:.0f} ms" if values else "n/a"


# ------------------------------------------------------------------ /proc

def _stat_fields(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (shared libraries split among their users); None where smaps_rollup is missing."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return int(_stat_fields(pid)[17])


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


# ------------------------------------------------------------------ gateway backends

@dataclass(frozen=True)
class Backend:
    """How to start a gateway: the real openclaw (provisioned into the test cache) or the Python double."""

    name: str
    command: tuple[str, ...]
    version: str

    def env(self, state_dir: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        """gateway.env for clawsvc (clawsvc itself adds the state dir, config path and token)."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.name == "real":
            env = realgw.gateway_env(state_dir, port)
            for key in ("PATH", "OPENCLAW_STATE_DIR", "OPENCLAW_CONFIG_PATH"):
                env.pop(key)
        else:
            env = {}
        return {**env, **(extra or {})}


def backend(name: str) -> Backend:
    if name == "real":
        install = realgw.provision()
        return Backend("real", tuple(install.command), f"openclaw {install.version}")
    return Backend("double", double_command(), "gateway double (tests/double)")


def gateway_processes(state_dir: Path) -> list[int]:
    """Live processes of the gateway owning this state dir (the real one runs three)."""
    return realgw.processes_with_env("OPENCLAW_STATE_DIR", str(state_dir.absolute()))


@dataclass
class Context:
    """Options of this run and what one benchmark measured that another needs (the gateway's cold start)."""

    quick: bool
    gateway: str  # "real" or "double": the gateway for the start/crash/hang/rpc/footprint figures
    cold_starts: list[float] = field(default_factory=list)  # reference spawn → hello-ok, seconds
    _backends: dict[str, Backend] = field(default_factory=dict)

    def backend(self, name: str | None = None) -> Backend:
        name = name or self.gateway
        if name not in self._backends:
            self._backends[name] = backend(name)
        return self._backends[name]

    def reps(self, full: int, quick: int) -> int:
        return quick if self.quick else full
