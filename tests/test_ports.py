"""port_holder / port_in_use against real listening sockets."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawsvc.gateway.ports import (
    PortHolder,
    _proc_endpoint,
    pid_with_socket,
    pids_with_socket,
    port_holder,
    port_in_use,
    process_holder,
    process_uids,
    server_end,
    socket_holder,
)

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


# ---------------------------------------------------------------- the server end of one connection

little_endian = pytest.mark.skipif(sys.byteorder != "little", reason="the samples are from a little-endian host")


@little_endian
@pytest.mark.parametrize(("text", "address", "port"), [
    ("0100007F:1F90", "127.0.0.1", 8080),
    ("0000000000000000FFFF00000100007F:0050", "127.0.0.1", 80),  # IPv4-mapped: compared as IPv4
    ("00000000000000000000000001000000:0016", "::1", 22),
    ("B80D0120000000000000000001000000:01BB", "2001:db8::1", 443),
])
def test_proc_net_addresses_are_decoded(text: str, address: str, port: int) -> None:
    assert _proc_endpoint(text) == (ipaddress.ip_address(address), port)


def connected_pair(family: int, host: str, listen_host: str | None = None) -> tuple[socket.socket, ...]:
    """(listener, client, accepted); the caller closes them."""
    listener = socket.socket(family)
    if family == socket.AF_INET6 and listen_host == "::":
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        listener.bind((listen_host or host, 0))
    except OSError:
        listener.close()
        pytest.skip(f"cannot bind {listen_host or host} here")
    listener.listen()
    client = socket.create_connection((host, listener.getsockname()[1]))
    accepted, _ = listener.accept()
    return listener, client, accepted


@linux_only
@pytest.mark.parametrize(("family", "host", "listen_host"), [
    (socket.AF_INET, "127.0.0.1", None),
    (socket.AF_INET6, "::1", None),
    (socket.AF_INET6, "127.0.0.1", "::"),  # dual-stack listener: its end is ::ffff:127.0.0.1 in tcp6
], ids=["ipv4", "ipv6", "ipv4-mapped"])
def test_server_end_is_the_accepted_socket_of_this_connection(family: int, host: str,
                                                              listen_host: str | None) -> None:
    listener, client, accepted = connected_pair(family, host, listen_host)
    with listener, client, accepted:
        end = server_end(client.getsockname(), client.getpeername())
        assert end is not None
        assert end.inode == os.fstat(accepted.fileno()).st_ino != os.fstat(client.fileno()).st_ino
        assert end.uid == os.geteuid()
        assert pid_with_socket({end.inode}) == os.getpid()
        assert socket_holder(end) == PortHolder(pid=os.getpid(), name=own_comm(), uid=os.geteuid())


@linux_only
def test_server_end_is_looked_for_only_in_the_pids_given() -> None:
    listener, client, accepted = connected_pair(socket.AF_INET, "127.0.0.1")
    with listener, client, accepted:
        end = server_end(client.getsockname(), client.getpeername())
        assert end is not None
        assert pid_with_socket({end.inode}, [os.getppid()]) is None
        assert pid_with_socket({end.inode}, [os.getppid(), os.getpid()]) == os.getpid()


@linux_only
def test_server_end_is_gone_once_the_server_closed_it() -> None:
    listener, client, accepted = connected_pair(socket.AF_INET, "127.0.0.1")
    with listener, client:
        local, peer = client.getsockname(), client.getpeername()
        accepted.close()
        assert server_end(local, peer) is None


@linux_only
def test_server_end_held_by_another_user_names_its_uid_and_pid() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen();"
            "print(s.getsockname()[1], flush=True); c,_=s.accept(); print('accepted', flush=True); sys.stdin.read()")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        with socket.create_connection(("127.0.0.1", port)) as client:
            assert child.stdout.readline().strip() == "accepted"
            end = server_end(client.getsockname(), client.getpeername())
            assert end is not None and end.uid == 65534
            holder = socket_holder(end)
            assert holder.pid == child.pid and holder.uid == 65534 and "uid 65534" in holder.describe()
    finally:
        child.stdin.close()
        child.wait(timeout=10)


@linux_only
def test_process_uids_are_the_real_and_effective_uid() -> None:
    assert process_uids(os.getpid()) == (os.getuid(), os.geteuid())
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert process_uids(gone.pid) is None


@linux_only
def test_every_holder_of_a_socket_is_listed_and_named_by_its_own_uid() -> None:
    """A socket accepted by root and inherited by a process running as 65534: /proc/net/tcp says uid 0, the
    holders are both processes, and the inheriting one is named as uid 65534."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    listener, client, accepted = connected_pair(socket.AF_INET, "127.0.0.1")
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
            "import sys; print('ready', flush=True); sys.stdin.read()"]
    with listener, client, accepted:
        end = server_end(client.getsockname(), client.getpeername())
        assert end is not None and end.uid == 0
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 pass_fds=[accepted.fileno()])
        try:
            assert child.stdout.readline().strip() == "ready"
            assert sorted(pids_with_socket({end.inode})) == sorted([os.getpid(), child.pid])
            assert process_uids(child.pid) == (65534, 65534)
            holder = process_holder(child.pid, end.uid)
            assert holder.uid == 65534 and "uid 65534" in holder.describe()
        finally:
            child.stdin.close()
            child.wait(timeout=10)
            child.stdout.close()
