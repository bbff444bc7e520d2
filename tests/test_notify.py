"""Notifier against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from clawsvc.service.notify import Notifier


class FakeSystemd:
    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(5)

    def recv(self) -> str:
        return self.sock.recv(65536).decode("utf-8")

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(5)
        return True


@pytest.fixture
def systemd(tmp_path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(str(tmp_path / "notify.sock"))
    yield fake
    fake.sock.close()


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd(f"@clawsvc-test-{uuid.uuid4().hex}")
    yield fake
    fake.sock.close()


def make(address: str, **extra: str) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": address, **extra})


def test_ready_with_status_is_one_datagram(systemd):
    notifier = make(systemd.address)
    notifier.ready("running pid=1234 port=18789")
    assert systemd.recv() == "READY=1\nSTATUS=running pid=1234 port=18789"
    notifier.ready()
    assert systemd.recv() == "READY=1"
    notifier.close()


def test_each_message(systemd):
    notifier = make(systemd.address)
    notifier.status("starting gateway")
    notifier.watchdog()
    notifier.extend_timeout(12.5)
    notifier.stopping()
    assert [systemd.recv() for _ in range(4)] == [
        "STATUS=starting gateway", "WATCHDOG=1", "EXTEND_TIMEOUT_USEC=12500000", "STOPPING=1"]
    notifier.close()


def test_reloading_carries_monotonic_time_in_the_same_datagram(systemd):
    notifier = make(systemd.address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = systemd.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


def test_status_is_one_line_and_non_latin1_arrives_as_utf8(systemd):
    notifier = make(systemd.address)
    notifier.status("error: port 18789 held by ñode →\nsee journal\t 日本")
    assert systemd.recv() == "STATUS=error: port 18789 held by ñode → see journal 日本"
    notifier.close()


def test_long_status_is_capped(systemd):
    notifier = make(systemd.address)
    notifier.status("x" * 5000)
    text = systemd.recv()
    assert text.startswith("STATUS=xxx") and text.endswith("...")
    assert len(text) < 1100
    notifier.close()


def test_abstract_socket(abstract_systemd):
    notifier = make(abstract_systemd.address)
    assert notifier.enabled
    notifier.ready("up")
    assert abstract_systemd.recv() == "READY=1\nSTATUS=up"
    notifier.close()


def test_watchdog_interval_is_half_of_watchdog_usec(systemd):
    assert make(systemd.address, WATCHDOG_USEC="10000000").watchdog_interval == 5.0
    assert make(systemd.address, WATCHDOG_USEC="3000000", WATCHDOG_PID=str(os.getpid())).watchdog_interval == 1.5


def test_watchdog_for_another_pid_or_unset_is_none(systemd):
    assert make(systemd.address, WATCHDOG_USEC="10000000", WATCHDOG_PID="1").watchdog_interval is None
    assert make(systemd.address).watchdog_interval is None
    assert make(systemd.address, WATCHDOG_USEC="garbage").watchdog_interval is None
    assert make(systemd.address, WATCHDOG_USEC="0").watchdog_interval is None


def test_without_notify_socket_every_call_is_a_no_op(systemd):
    notifier = Notifier({"WATCHDOG_USEC": "10000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.extend_timeout(1)
    notifier.reloading()
    notifier.stopping()
    notifier.close()
    assert not systemd.pending()


def test_send_error_is_logged_once_and_never_raises(tmp_path, caplog):
    notifier = make(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.WARNING, logger="clawsvc.service.notify"):
        for _ in range(5):
            notifier.watchdog()
            notifier.status("still here")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "nobody-listens.sock" in warnings[0].getMessage()


def test_recovers_when_the_socket_comes_back(tmp_path, caplog):
    address = str(tmp_path / "later.sock")
    notifier = make(address)
    with caplog.at_level(logging.INFO, logger="clawsvc.service.notify"):
        notifier.watchdog()
        fake = FakeSystemd(address)
        try:
            notifier.watchdog()
            assert fake.recv() == "WATCHDOG=1"
        finally:
            fake.sock.close()
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    notifier.close()
