"""The fast tier runs under pytest-xdist: the test port allocator (double.free_port) must never hand two workers
the same port, nor a port the kernel may give an outgoing connection meanwhile."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import double
import pytest
from double import PORT_RANGE, free_port

TESTS = Path(__file__).parent
EPHEMERAL_LOW = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def ports_of_worker(worker: str, count: int, how_many: int) -> list[int]:
    """free_port() called `how_many` times in a fresh process that xdist would call `worker` of `count`."""
    code = f"import json; from double import free_port; print(json.dumps([free_port() for _ in range({how_many})]))"
    env = {**os.environ, "PYTEST_XDIST_WORKER": worker, "PYTEST_XDIST_WORKER_COUNT": str(count),
           "PYTHONPATH": str(TESTS)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30,
                          check=True)
    return json.loads(done.stdout)


def test_workers_get_disjoint_slices_below_the_ephemeral_range() -> None:
    ports = {worker: ports_of_worker(worker, 4, 200) for worker in ("gw0", "gw1", "gw2", "gw3")}
    size = len(PORT_RANGE) // 4
    for index, worker in enumerate(ports):
        first = PORT_RANGE.start + index * size
        assert all(first <= port < first + size for port in ports[worker]), worker
    every = [port for worker_ports in ports.values() for port in worker_ports]
    assert len(set(every)) == len(every) == 800
    assert max(every) < EPHEMERAL_LOW


def test_each_call_gives_a_new_port_even_before_the_last_one_is_bound() -> None:
    first, second = free_port(), free_port()
    assert first != second
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", first))  # nobody holds what free_port() returned


def test_a_held_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder, socket.socket() as probe:
        holder.bind(("127.0.0.1", 0))
        probe.bind(("127.0.0.1", 0))
        held, free = holder.getsockname()[1], probe.getsockname()[1]
        probe.close()
        monkeypatch.setattr(double, "_worker_ports", lambda: iter([held, free]))
        assert free_port() == free
