"""The metrics (clawsvc/service/metrics.py) as text promtool accepts, the HTTP endpoint and the textfile
(exposition.py), the memory sample and openclaw's heap policy (gateway/memory.py), and the config keys."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prom import prometheus_binary
from waiting import poll

from clawsvc.atomicfile import write_atomically
from clawsvc.config import Config, ConfigError, MetricsConfig, parse_config
from clawsvc.gateway import memory
from clawsvc.service import exposition
from clawsvc.service.exposition import MAX_CLIENTS, MetricsServer, Outputs, TextfileWriter
from clawsvc.service.metrics import Counts, instance_of, render
from clawsvc.service.status import Snapshot, State

MIB = 1 << 20
REASONS = ("crash", "hang", "requested", "reload", "upgrade", "memory")


def snapshot(**changes: object) -> Snapshot:
    base = Snapshot.empty(Config(), 4242, 100.0)
    running = replace(base, state=State.RUNNING, pid=77, gateway_version="2026.9.6", ready=True, memory=912 * MIB,
                      restarts_by=tuple(zip(REASONS, (2, 1, 0, 0, 0, 1), strict=True)), health_failures=3,
                      last_start=150.0, config="/etc/clawsvc/clawsvc.yaml")
    return replace(running, **changes)  # type: ignore[arg-type]


def samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([prometheus_binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)


def test_the_exposition_has_every_metric_of_the_issue_and_promtool_accepts_it() -> None:
    counts = Counts(5, {"1": 2}, {"1": 9}, {"1": 0})
    text = render(snapshot(), now=200.0, wall=1_800_000_000.0, counts=counts)
    found = samples(text)
    assert found["clawsvc_gateway_up"] == 1 and found["clawsvc_gateway_ready"] == 1
    assert found['clawsvc_state{state="running"}'] == 1 and found['clawsvc_state{state="stopped"}'] == 0
    assert {reason: found[f'clawsvc_gateway_restarts_total{{reason="{reason}"}}'] for reason in REASONS} == {
        "crash": 2, "hang": 1, "requested": 0, "reload": 0, "upgrade": 0, "memory": 1}
    assert found["clawsvc_gateway_last_start_seconds"] == 1_800_000_000.0 - 50.0
    assert found["clawsvc_health_check_failures_total"] == 3
    assert found["clawsvc_gateway_resident_memory_bytes"] == 912 * MIB
    assert found["clawsvc_events_missed_total"] == 5
    assert found['clawsvc_alerts_sent_total{hook="1"}'] == 2 and found['clawsvc_alerts_held_back_total{hook="1"}'] == 9
    assert found['clawsvc_build_info{version="0.1.0",gateway_version="2026.9.6"}'] == 1
    for name in ("clawsvc_gateway_up", "clawsvc_gateway_restarts_total", "clawsvc_build_info"):
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text
    result = promtool_check(text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_named_instance_labels_every_sample_and_odd_versions_are_escaped() -> None:
    text = render(snapshot(config="/etc/clawsvc/work.yaml", gateway_version='2026"9\\6\nx'), 200.0, 1e9)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all('instance="work"' in line for line in lines), lines
    assert 'gateway_version="2026\\"9\\\\6\\nx"' in text
    assert promtool_check(text).returncode == 0
    assert instance_of("/etc/clawsvc/clawsvc.yaml") is None and instance_of("/srv/work.yaml") is None
    assert instance_of(None) is None and instance_of("/etc/clawsvc/Bad Name.yaml") is None


def test_a_stopped_service_shows_down_and_leaves_out_what_it_does_not_know() -> None:
    text = render(snapshot(state=State.RECONNECTING, memory=None, last_start=None, ready=None), 200.0, 1e9)
    found = samples(text)
    assert found["clawsvc_gateway_up"] == 0 and found["clawsvc_gateway_ready"] == 0
    assert found['clawsvc_state{state="reconnecting"}'] == 1
    assert "resident_memory" not in text and "last_start" not in text
    assert promtool_check(text).returncode == 0


def test_no_secret_path_or_chat_reaches_the_metrics() -> None:
    text = render(snapshot(error="token abcdef in /var/lib/x", cause="chat: card 4111", last_exit="killed"), 200.0, 1e9)
    for leaked in ("abcdef", "/var/lib", "4111", "clawsvc.yaml", "killed"):
        assert leaked not in text


# ---------------------------------------------------------------- the endpoint and the file

def http(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our request unread
            pass
        return b"".join(chunks)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server() -> object:
    served = MetricsServer(f"127.0.0.1:{free_port()}", lambda: "clawsvc_gateway_up 1\n")
    served.start()
    yield served
    served.close()


def test_get_metrics_answers_and_nothing_else_does(server: MetricsServer) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    answer = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nclawsvc_gateway_up 1\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n" in answer
    assert http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n").endswith(b"Connection: close\r\n\r\n")
    assert http(port, b"GET /metrics?x=1 HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert http(port, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc").startswith(b"HTTP/1.1 405")
    assert http(port, b"x" * 20000) == b"", "a head over 8 KiB gets no answer"


def test_a_client_that_sends_nothing_holds_the_endpoint_for_the_read_timeout_only(server: MetricsServer) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as idle:
        answered: list[bytes] = []
        worker = threading.Thread(target=lambda: answered.append(http(port, b"GET /metrics HTTP/1.1\r\n\r\n")))
        worker.start()
        worker.join(15)
        assert answered and answered[0].startswith(b"HTTP/1.1 200"), "served after the silent client's 2 s"
        assert idle.recv(10) == b"", "the silent client was dropped"


def still_open(sock: socket.socket) -> bool:
    """The server has neither answered nor closed this connection (yet)."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    return False


@pytest.fixture
def patient() -> Iterator[float]:
    """Silent clients may wait 30 s for their head here, so none is dropped for its slowness during a test; the
    scrapes' own timeout is a third of that."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exposition, "READ_TIMEOUT", 30.0)
        yield 10.0


def test_clients_that_connect_and_say_nothing_never_keep_a_scrape_waiting(server: MetricsServer,
                                                                          patient: float) -> None:
    # one request at a time, each silent client held the endpoint for its 2 s: 10 of them kept Prometheus (10 s
    # scrape timeout) from ever getting an answer
    port = int(server.address.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=patient) for _ in range(40)]
    try:
        assert http(port, b"GET /metrics HTTP/1.1\r\n\r\n", timeout=patient).startswith(b"HTTP/1.1 200")
        assert all(still_open(sock) for sock in idle), "answered while every silent client still waits its turn"
    finally:
        for sock in idle:
            sock.close()


def test_past_max_clients_the_oldest_silent_one_makes_room(server: MetricsServer, patient: float) -> None:
    port = int(server.address.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=patient) for _ in range(MAX_CLIENTS)]
    try:
        assert http(port, b"GET /metrics HTTP/1.1\r\n\r\n", timeout=patient).startswith(b"HTTP/1.1 200")
        idle[0].settimeout(patient)
        assert idle[0].recv(1) == b"", "the oldest was dropped for the scrape"
        assert still_open(idle[-1])
    finally:
        for sock in idle:
            sock.close()


# A clawsvc whose descriptors run out: it serves metrics (and is answered once), takes every descriptor left (dup),
# says "full", and gives them back on a line from stdin.
OUT_OF_FDS = """import logging, os, resource, socket, sys
from clawsvc.service.exposition import MetricsServer
logging.basicConfig(stream=sys.stderr, format="%(message)s")
server = MetricsServer(sys.argv[1], lambda: "x 1\\n")
server.start()
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port))) as first:  # answered: the endpoint's thread has all it needs
    first.sendall(b"GET /metrics HTTP/1.0\\r\\n\\r\\n")
    assert first.recv(15) == b"HTTP/1.1 200 OK"
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
taken = []
try:
    while True:
        taken.append(os.dup(0))
except OSError:
    pass
print("full", flush=True)
sys.stdin.readline()
for fd in taken:
    os.close(fd)
print("released", flush=True)
sys.stdin.readline()
server.close()
"""


def test_out_of_descriptors_the_endpoint_waits_instead_of_spinning_and_then_serves_again() -> None:
    address = f"127.0.0.1:{free_port()}"
    port = int(address.rsplit(":", 1)[1])
    with subprocess.Popen([sys.executable, "-c", OUT_OF_FDS, address], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
            assert proc.stdout.readline() == "full\n"
            with socket.create_connection(("127.0.0.1", port), timeout=30) as waiting:  # queued, not accepted
                warning = proc.stderr.readline()
                assert warning.startswith(f"metrics endpoint {address}: accept failed: Too many open files; trying "
                                          "again in 1s"), warning
                proc.stdin.write("release\n")
                proc.stdin.flush()
                assert proc.stdout.readline() == "released\n"
                waiting.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
                assert waiting.recv(15) == b"HTTP/1.1 200 OK", "served once descriptors are back"
            proc.stdin.write("stop\n")
            proc.stdin.close()
            assert proc.wait(30) == 0
            warnings = 1 + proc.stderr.read().count("accept failed")
            assert warnings <= 3, f"{warnings} warnings: the endpoint spun on accept() instead of waiting"
        finally:
            if proc.poll() is None:
                proc.kill()


def test_a_port_that_cannot_be_bound_is_logged_and_the_rest_goes_on(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        outputs = Outputs(lambda: "x 1\n")
        outputs.open(replace(Config(), metrics=MetricsConfig(f"127.0.0.1:{port}", tmp_path / "m.prom")))
        try:
            assert f"cannot serve metrics on 127.0.0.1:{port}" in caplog.text
            poll(lambda: (tmp_path / "m.prom").exists(), 10, "the textfile")
        finally:
            outputs.close()


def test_the_textfile_is_replaced_whole_readable_by_node_exporter_and_rewritten_on_change(tmp_path: Path) -> None:
    target = tmp_path / "clawsvc.prom"
    value = ["a 1\n"]
    writer = TextfileWriter(target, lambda: value[0])
    writer.start()
    try:
        poll(lambda: target.exists() and target.read_text() == "a 1\n", 10, "the first write")
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        value[0] = "a 2\n"
        writer.changed()
        poll(lambda: target.read_text() == "a 2\n", 10, "the rewrite on change")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["clawsvc.prom"], "no temporary file is left"
    finally:
        writer.close()


def test_write_atomically_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    target = tmp_path / "out.prom"
    (tmp_path / ".out.prom.clawsvc-tmp").symlink_to(victim)
    target.symlink_to(victim)
    write_atomically(target, b"x 1\n", 0o644)
    assert victim.read_text() == "mine\n" and not target.is_symlink() and target.read_text() == "x 1\n"


# ---------------------------------------------------------------- memory and the heap policy

@pytest.mark.parametrize(("available_mib", "expected"), [
    (2048, 1536),      # three quarters caps it below the 2 GiB floor
    (4096, 2048),      # the floor
    (16384, 8192),     # half
    (24576, 8192),     # the 8 GiB cap
    (65536, 16384),    # a quarter raises the cap
    (262144, 65536),
])
def test_the_heap_limit_is_openclaws_policy(available_mib: int, expected: int) -> None:
    assert memory.heap_limit_mib(available_mib * MIB) == expected
    assert memory.heap_limit_mib(None) is None and memory.heap_limit_mib(MIB) is None


def test_the_heap_flag_goes_on_nodes_argv_or_into_node_options_unless_one_is_named() -> None:
    available = (16384 * MIB, "physical")
    argv, how = memory.with_heap_limit(["/opt/node", "/opt/openclaw.mjs", "gateway"], {}, True, available)
    assert argv == ["/opt/node", "--max-old-space-size=8192", "/opt/openclaw.mjs", "gateway"]
    assert how is not None and "16384 MiB of physical memory" in how
    env = {"NODE_OPTIONS": "--enable-source-maps"}
    argv, _ = memory.with_heap_limit(["/usr/bin/openclaw", "gateway"], env, False, available)
    assert argv == ["/usr/bin/openclaw", "gateway"] and env["NODE_OPTIONS"] == "--enable-source-maps " \
                                                                               "--max-old-space-size=8192"
    for named_argv, named_env in ((["/opt/node", "--max-old-space-size=3000", "x.mjs"], {}),
                                  (["/opt/node", "x.mjs"], {"NODE_OPTIONS": "--max_old_space_size=3000"}),
                                  (["/opt/node", "x.mjs"], {"NODE_OPTIONS": "--max-heap-size=3000"})):
        env = dict(named_env)
        assert memory.with_heap_limit(list(named_argv), env, True, available) == (named_argv, None)
        assert env == named_env


def test_the_memory_of_a_process_tree_is_sampled(tmp_path: Path) -> None:
    child = subprocess.Popen(["python3", "-c", "x = bytearray(64 << 20); import time; time.sleep(60)"])
    try:
        poll(lambda: (memory.tree_rss(child.pid) or 0) > 60 * MIB, 10, "the child's 64 MiB")
        whole = memory.sample(os.getpid())
        assert whole is not None and whole[1] == "rss" and whole[0] > 60 * MIB, "clawsvc's own tree, child included"
    finally:
        child.kill()
        child.wait()
    assert memory.sample(child.pid) is None
    available, source = memory.available_memory()
    assert source in ("physical", "constrained") and available is not None and available > 256 * MIB


# ---------------------------------------------------------------- the config keys

def test_memory_metrics_and_alerts_keys_parse() -> None:
    config = parse_config("gateway:\n  memory: {warn_above: 1.5G, restart_above: 2GiB, cooldown: 30m}\n"
                          "metrics:\n  listen: '[::1]:9464'\n  textfile: /var/lib/x/clawsvc.prom\n"
                          "alerts:\n  - on: [restart, error]\n    command: [notify-send]\n    min_interval: 5m\n",
                          "c.yaml")
    assert (config.gateway.memory.warn_above, config.gateway.memory.restart_above) == (3 * 512 * MIB, 2048 * MIB)
    assert config.gateway.memory.cooldown == 1800.0 and config.metrics.listen == "[::1]:9464"
    hook = config.alerts[0]
    assert (hook.on, hook.command, hook.min_interval, hook.timeout, hook.line) == (
        ("restart", "error"), ("notify-send",), 300.0, 10.0, 7)


@pytest.mark.parametrize(("text", "where"), [
    ("gateway:\n  memory: {warn_above: 512}\n", "c.yaml:2: gateway.memory.warn_above: must be between 1M and 1P"),
    ("gateway:\n  memory:\n    cooldown: 10s\n", "c.yaml:3: gateway.memory.cooldown: must be at least 60.0s"),
    ("metrics:\n  listen: 9464\n", "c.yaml:2: metrics.listen: expected HOST:PORT"),
    ("metrics:\n  listen: example.org:9464\n", "c.yaml:2: metrics.listen: expected an IP address or localhost"),
    ("alerts:\n  - on: [restart]\n", "c.yaml:2: alerts[0]: give exactly one of command"),
    ("alerts:\n- on: [x]\n  command: [a]\n- on: [y]\n  webhook: ftp://h/\n", "c.yaml:4: alerts[1]: webhook: expected"),
    ("alerts:\n  - on: [x]\n    command: [a]\n    headers_file: /h\n", "c.yaml:2: alerts[0]: headers_file goes with"),
    ("alerts:\n  - on: restart\n    command: [a]\n", "c.yaml:2: alerts[0]: on: expected a list of event names"),
    ("alerts:\n  - on: [x]\n    webhook: https://h/\u00fc\n", "c.yaml:2: alerts[0]: webhook: write the URL in ASCII"),
])
def test_bad_monitoring_keys_name_file_line_and_key(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text, "c.yaml")
    assert str(error.value).startswith(where), str(error.value)


def test_a_change_of_the_memory_watch_does_not_restart_the_gateway() -> None:
    from clawsvc.config import gateway_affecting

    old = parse_config("gateway:\n  port: 1234\n", "c.yaml")
    new = parse_config("gateway:\n  port: 1234\n  memory: {restart_above: 2G}\nmetrics:\n  listen: 127.0.0.1:1\n",
                       "c.yaml")
    assert gateway_affecting(old, new) == []

