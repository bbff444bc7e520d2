"""port_holder / port_in_use against real listening sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawsvc.ports import PortHolder, port_holder, port_in_use

linux_only = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net/tcp")


def own_comm() -> str:
    return Path(f"/proc/{os.getpid()}/comm").read_text().strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@linux_only
def test_listener_in_this_process_is_found():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        holder = port_holder(port)
    assert holder == PortHolder(pid=os.getpid(), name=own_comm(), uid=os.geteuid())
    assert holder.describe() == f"pid {os.getpid()} ({own_comm()})"


@linux_only
def test_ipv6_listener_is_found():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(socket.AF_INET6) as s:
        try:
            s.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1 on this host")
        s.listen()
        holder = port_holder(s.getsockname()[1])
    assert holder is not None and holder.pid == os.getpid()


@linux_only
def test_listener_in_a_child_of_another_user_names_that_child():
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
            "print(s.getsockname()[1], flush=True); sys.stdin.read()")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        holder = port_holder(port)
        assert holder is not None
        assert holder.pid == child.pid
        assert holder.uid == 65534
        assert holder.name == Path(f"/proc/{child.pid}/comm").read_text().strip()
        assert "uid 65534" in holder.describe()
    finally:
        child.stdin.close()
        child.wait(timeout=10)


def test_free_port_has_no_holder_and_is_not_in_use():
    port = free_port()
    assert port_holder(port) is None
    assert port_in_use(port) is False


def test_bound_but_not_listening_is_not_a_holder():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert port_holder(s.getsockname()[1]) is None


def test_port_in_use_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_in_use(s.getsockname()[1]) is True


def test_describe_when_the_process_is_not_visible():
    assert PortHolder(pid=None, name=None, uid=0).describe() == (
        "a process of user root (uid 0) that this user cannot inspect (run as root to see its pid)")
    assert "uid 4000123" in PortHolder(pid=None, name=None, uid=4000123).describe()


def test_describe_with_nothing_known():
    assert "ss -ltnp" in PortHolder(pid=None, name=None).describe()


def test_lookup_is_quick_enough_for_an_error_path():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        start = time.monotonic()
        port_holder(s.getsockname()[1])
        assert time.monotonic() - start < 10  # generous: only catches a runaway /proc scan
