"""Alert hooks (clawsvc/service/alerts.py, webhook.py) with a real command and a real local HTTP server: what a
hook gets, the rate limit and its held-back count, a failing hook logged once per interval, webhooks' bounds and
redirects, the names checked against the catalogue, and `clawsvc alert` (the units' OnFailure=)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hookkit import Receiver, command_hook, recorded

from clawsvc.boundedrun import STDIN_MAX, run_bounded
from clawsvc.config import AlertHook, Config, ConfigError, parse_config
from clawsvc.service import catalogue
from clawsvc.service.alerts import Gate, Hooks, check_names, fire, message, run_hook
from clawsvc.service.events import Event
from clawsvc.service.webhook import HookFailed, post
from clawsvc.users import service_uid

EXITED = catalogue.EXITED.payload(7, "killed by SIGKILL", None, 9)


def exited(when: float = 1_800_000_000.0) -> Event:
    return Event(when, "service", "gateway.exited", EXITED)


def config_with(*hooks: AlertHook, source: str = "/etc/clawsvc/clawsvc.yaml") -> Config:
    return replace(Config(), alerts=hooks, source=Path(source))


def test_the_gate_runs_once_per_interval_and_counts_what_it_held_back() -> None:
    gate = Gate(60.0)
    assert gate.offer(0.0) == 0
    assert [gate.offer(t) for t in (1.0, 2.0, 3.0)] == [None, None, None], "still running"
    gate.busy = False
    assert [gate.offer(t) for t in range(4, 60)] == [None] * 56
    assert gate.offer(60.0) == 59 and (gate.sent, gate.held_total) == (2, 59)
    gate.busy = False
    assert gate.offer(130.0) == 0


def test_a_failure_is_logged_once_per_interval() -> None:
    gate = Gate(60.0)
    assert [gate.failure(t) for t in (0.0, 10.0, 20.0, 61.0, 62.0)] == [0, None, None, 2, None]
    assert gate.failed == 5


def test_the_message_is_the_event_with_a_readable_line_the_host_and_the_instance() -> None:
    sent = json.loads(message(exited(0.5), 3, config_with(source="/etc/clawsvc/work.yaml")))
    assert sent == {"time": "1970-01-01T00:00:00.500Z", "source": "service", "name": "gateway.exited",
                    "payload": EXITED, "held_back": 3, "host": socket.gethostname(), "instance": "work",
                    "text": f"clawsvc on {socket.gethostname()} (work): gateway.exited: pid 7 killed by SIGKILL"}


def test_an_event_with_a_huge_field_still_reaches_a_command_hook(tmp_path: Path) -> None:
    # a gateway's error text in `health.failed`, say: the readable line repeated it, so the JSON outgrew what a
    # hook's stdin takes and the run ended in a ValueError (a traceback in the log)
    record = tmp_path / "got"
    hook = AlertHook(("health.failed",), command=tuple(command_hook(record)))
    kind = catalogue.SERVICE["health.failed"]
    event = Event(0.0, "service", "health.failed", {field: "x" * 100_000 for field in kind.fields})
    run_hook(hook, message(event, 0, config_with(hook)), event.name)
    [got] = recorded(record)
    assert got["payload"] == {"truncated": True, "bytes": got["payload"]["bytes"]} and len(got["text"]) < 2100


def test_a_command_hook_gets_the_event_json_on_stdin_once(tmp_path: Path) -> None:
    record = tmp_path / "got"
    hooks = Hooks(config_with(AlertHook(("gateway.exited",), command=tuple(command_hook(record)))))
    hooks.offer(exited())
    hooks.offer(Event(0.0, "service", "ready", {"version": "v", "pid": 7}))  # not this hook's
    hooks.offer(Event(0.0, "gateway", "gateway.exited", {}))  # the gateway's own name-alike is never hooked
    assert hooks.wait(30)
    assert [(e["name"], e["payload"], e["held_back"]) for e in recorded(record)] == [("gateway.exited", EXITED, 0)]


def test_ten_events_in_a_minute_give_one_run_and_the_next_run_says_how_many_were_held_back(tmp_path: Path) -> None:
    record = tmp_path / "got"
    now = [0.0]
    hooks = Hooks(config_with(AlertHook(("gateway.exited",), command=tuple(command_hook(record)))), lambda: now[0])
    for second in range(10):
        now[0] = float(second * 5)
        hooks.offer(exited())
        hooks.wait(30)
    assert len(recorded(record)) == 1
    counts = hooks.counts(0)
    assert (counts.alerts_sent, counts.alerts_held_back, counts.alerts_failed) == ({"1": 1}, {"1": 9}, {"1": 0})
    now[0] = 61.0
    hooks.offer(exited())
    assert hooks.wait(30)
    assert [e["held_back"] for e in recorded(record)] == [0, 9]


def test_a_failing_command_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    hook = AlertHook(("error",), command=("sh", "-c", "echo 'no route to pager' >&2; exit 3"), min_interval=60.0)
    hooks = Hooks(config_with(hook), lambda: now[0])
    for t in (0.0, 10.0, 20.0, 61.0):
        now[0] = t
        hooks.offer(Event(0.0, "service", "error", {"error": "gave up", "exit_code": 1}))
        assert hooks.wait(30)
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert hook 1 (command sh) failed")]
    assert len(warnings) == 2, warnings
    assert "sh exited with status 3: no route to pager" in warnings[0]
    counts = hooks.counts(0)
    assert (counts.alerts_sent, counts.alerts_held_back, counts.alerts_failed) == ({"1": 2}, {"1": 2}, {"1": 2})


@pytest.mark.skipif(os.geteuid() != 0 or service_uid() is None, reason="needs root and the clawsvc user")
def test_as_root_a_command_runs_as_the_service_user_never_as_root() -> None:
    hook = AlertHook(("error",), command=("sh", "-c", f'test "$(id -u)" = {service_uid()} && test "$(id -G)" = '
                                                      f'"$(id -g)"'))
    assert fire(config_with(hook), Event(0.0, "service", "error", {"error": "x", "exit_code": 1})) == []


def test_a_hook_that_outlives_its_timeout_is_stopped(tmp_path: Path) -> None:
    hook = AlertHook(("error",), command=("sleep", "60"), timeout=0.5)
    started = time.monotonic()
    failures = fire(config_with(hook), Event(0.0, "service", "error", {"error": "x", "exit_code": 1}))
    assert time.monotonic() - started < 10
    assert failures == ["alert hook 1 (command sleep): sleep did not finish within 0.5s; stopped it"]


# ---------------------------------------------------------------- webhooks

def test_a_webhook_gets_the_json_as_a_post_with_the_headers_of_its_file(tmp_path: Path) -> None:
    headers = tmp_path / "headers"
    headers.write_text("# the chat's token\nAuthorization: Bearer s3cr3t-t0ken\nX-Priority: high\n")
    headers.chmod(0o600)
    with Receiver() as receiver:
        hook = AlertHook(("gateway.exited",), webhook=f"{receiver.url}/hooks/abc?x=1", headers_file=headers)
        assert fire(config_with(hook), exited()) == []
        (path, sent, body), = receiver.posts
    assert path == "/hooks/abc?x=1" and sent["Authorization"] == "Bearer s3cr3t-t0ken"
    assert sent["Content-Type"] == "application/json" and sent["X-Priority"] == "high"
    assert b'"name":"gateway.exited"' in body


def test_a_redirect_to_the_same_host_is_followed_and_to_another_host_refused(tmp_path: Path) -> None:
    with Receiver() as receiver:
        receiver.routes["/old"] = (308, "/new")
        assert post(f"{receiver.url}/old", b"{}", 5.0) == 204
        assert [where for where, _, _ in receiver.posts] == ["/old", "/new"]
        receiver.routes["/away"] = (302, "http://127.0.0.2:9/steal")
        with pytest.raises(HookFailed, match=r"redirected to another host \(http://127\.0\.0\.2:9\); not followed"):
            post(f"{receiver.url}/away", b"{}", 5.0)
        receiver.routes["/loop"] = (307, "/loop")
        with pytest.raises(HookFailed, match="redirected more than 3 times"):
            post(f"{receiver.url}/loop", b"{}", 5.0)
        receiver.routes["/broken"] = (500, None)
        with pytest.raises(HookFailed) as failed:
            post(f"{receiver.url}/broken", b"{}", 5.0)
        assert "answered HTTP 500" in str(failed.value) and "/broken" not in str(failed.value), "never the path"


def test_a_webhook_that_never_answers_is_given_up_within_its_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(HookFailed, match="did not answer within 1s"):
            post(f"http://127.0.0.1:{silent.getsockname()[1]}/x", b"{}", 1.0)
        assert time.monotonic() - started < 5


def dribble(listener: socket.socket, stop: threading.Event) -> None:
    """A peer that takes the POST, then sends its answer's head a byte at a time, each well within the socket's
    timeout, and completes it (a 200) only after 30 s, or as soon as the client hangs up."""
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)
        answer = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 300 + b"\r\nContent-Length: 0\r\n\r\n"
        try:
            for byte in answer[:-4]:
                conn.sendall(bytes([byte]))
                if stop.wait(0.1):
                    return
            conn.sendall(answer[-4:])
        except OSError:  # the client gave up and closed
            return


def test_a_webhook_that_answers_a_byte_at_a_time_is_given_up_at_its_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stop = threading.Event()
        peer = threading.Thread(target=dribble, args=(listener, stop), name="clawsvc-test-dribble")
        peer.start()
        try:
            with pytest.raises(HookFailed, match="did not answer within 1s"):
                post(f"http://127.0.0.1:{listener.getsockname()[1]}/x", b"{}", 1.0)
        finally:
            stop.set()
            peer.join(10)


def test_what_http_cannot_carry_is_a_one_line_failure_without_the_header_value(tmp_path: Path) -> None:
    headers = tmp_path / "headers"
    headers.write_text("Authorization: Bearer s\u00e9cret-\u2713\n")
    headers.chmod(0o600)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(HookFailed) as raised:
            post(f"{url}/x", b"{}", 1.0, headers)
        assert str(raised.value) == (f"headers_file {headers}:1: the value of Authorization is not printable ASCII, "
                                     "which is all an HTTP header carries")
        with pytest.raises(HookFailed, match="UnicodeEncodeError"):  # what config refuses, were it ever given
            post(f"{url}/\u00fc", b"{}", 1.0)


def test_a_headers_file_others_can_write_is_refused(tmp_path: Path) -> None:
    headers = tmp_path / "headers"
    headers.write_text("Authorization: Bearer x\n")
    headers.chmod(0o666)
    with pytest.raises(HookFailed, match="headers_file"):
        post("http://127.0.0.1:9/", b"{}", 1.0, headers)


# ---------------------------------------------------------------- names, `clawsvc alert`, run_bounded's input

def test_hook_names_are_checked_against_the_catalogue_naming_file_and_line() -> None:
    config = parse_config("alerts:\n  - on: [restart]\n    command: [a]\n  - on: [restart, chat]\n"
                          "    command: [a]\n", "/etc/clawsvc/c.yaml")
    with pytest.raises(ConfigError) as error:
        check_names(config)
    assert str(error.value).startswith("/etc/clawsvc/c.yaml:4: alerts[1].on: 'chat' is the gateway's: it can carry "
                                       "chat content")
    with pytest.raises(ConfigError, match=r"c\.yaml:2: alerts\[0\]\.on: 'restrat' is no event of clawsvc's"):
        check_names(parse_config("alerts:\n  - on: [restrat]\n    command: [a]\n", "c.yaml"))
    check_names(parse_config("alerts:\n  - on: [memory.high, service.failed]\n    command: [a]\n", "c.yaml"))


def test_clawsvc_alert_runs_the_service_failed_hooks_with_systemds_result(tmp_path: Path) -> None:
    record = tmp_path / "got"
    config = tmp_path / "clawsvc.yaml"
    config.write_text(yaml.safe_dump({"alerts": [{"on": ["service.failed"], "command": command_hook(record)},
                                                 {"on": ["error"], "command": ["/bin/false"]}]}))
    env = {**os.environ, "MONITOR_SERVICE_RESULT": "exit-code", "MONITOR_EXIT_CODE": "exited",
           "MONITOR_EXIT_STATUS": "1"}
    done = subprocess.run([sys.executable, "-m", "clawsvc", "alert", "-c", str(config), "--unit", "clawsvc.service"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "service.failed (clawsvc.service): 1 of 1 alert hook(s) ran" in done.stdout
    (got,) = recorded(record)
    assert got["name"] == "service.failed" and got["payload"] == {
        "unit": "clawsvc.service", "result": "exit-code", "exit_code": "exited", "exit_status": "1"}


def test_clawsvc_alert_exits_1_when_a_hook_fails_and_78_on_a_bad_name(tmp_path: Path) -> None:
    config = tmp_path / "clawsvc.yaml"
    config.write_text("alerts:\n  - on: [service.failed]\n    command: [/bin/false]\n")
    run = [sys.executable, "-m", "clawsvc", "alert", "-c", str(config)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "alert hook 1 (command /bin/false): /bin/false exited with status 1" in done.stderr
    config.write_text("alerts:\n  - on: [tick]\n    command: [/bin/true]\n")
    done = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and f"{config}:2: alerts[0].on: 'tick' is the gateway's" in done.stderr


def test_run_bounded_hands_its_input_on_stdin_and_refuses_more_than_a_pipe_holds() -> None:
    done = run_bounded(["sh", "-c", "wc -c"], env={"PATH": os.defpath}, timeout=10, cap=100, stdin=b"x" * STDIN_MAX)
    assert done.output.strip() == str(STDIN_MAX).encode()
    done = run_bounded(["true"], env={"PATH": os.defpath}, timeout=10, cap=100, stdin=b"unread")
    assert done.returncode == 0, "a program that reads nothing is no error"
    with pytest.raises(ValueError):
        run_bounded(["true"], env={}, timeout=1, cap=1, stdin=b"x" * (STDIN_MAX + 1))


def test_a_hook_of_an_unchanged_config_keeps_its_rate_limit_across_a_reload(tmp_path: Path) -> None:
    record = tmp_path / "got"
    hook = AlertHook(("restart",), command=tuple(command_hook(record)))
    hooks = Hooks(config_with(hook))
    hooks.offer(Event(0.0, "service", "restart", {}))
    assert hooks.wait(30)
    hooks.update(config_with(hook, AlertHook(("error",), command=("true",))))
    hooks.offer(Event(0.0, "service", "restart", {}))
    assert hooks.wait(30)
    assert len(recorded(record)) == 1 and hooks.counts(0).alerts_held_back == {"1": 1, "2": 0}
