"""clawsvc's benchmarks: `python -m bench` (from the repo root) prints a table and writes BENCHMARKS.md.

Every figure is measured next to a baseline in the same run (alternating where it can), so machine noise
cancels: start overhead, crash recovery, hang detection, RPC latency/throughput, event dispatch, footprint
and a restart soak. See `python -m bench --help`.
"""
