"""Faults on the wire: garbage frames, frames over the granted maxPayload, a huge reply, a protocol mismatch."""

from __future__ import annotations

import json
from typing import Any

from faultkit import (
    Callers,
    Services,
    cli,
    error_lines,
    finish,
    health_ok,
    last_status,
    ready,
    requests_seen,
    spawned,
    stops_clean,
)
from service_proc import ServiceProcess, poll

from clawsvc import exitcodes


def assert_same_link(svc: ServiceProcess, status: dict[str, Any], mark: int) -> None:
    """No reconnect since `mark`: same gateway pid, same connection, still running."""
    now = svc.status()
    assert now["state"] == "running" and now["pid"] == status["pid"], now
    assert now["connectedAt"] == status["connectedAt"], "the link was re-established"
    assert not svc.peer.find(r"^STATUS=(reconnecting|starting)", since=mark)


def test_garbage_frames_are_skipped_and_a_call_in_flight_still_gets_its_answer(services: Services,
                                                                               callers: Callers) -> None:
    svc = services.start(events=True)
    status = ready(svc)
    mark = svc.peer.mark()
    slow = callers.start(svc, "rpc", "double.sleep", '{"ms": 1500}')
    poll(lambda: requests_seen(svc, "double.sleep"), 10, "the slow call to reach the double")

    garbage = cli(svc, "rpc", "double.garbage")  # non-JSON, a JSON array, unknown type, res without id, binary
    assert garbage.returncode == 0, garbage.stderr
    assert json.loads(garbage.stdout) == {"sent": 5}

    code, out, err = finish(slow)
    assert code == 0, err
    assert json.loads(out) == {"sleptMs": 1500}
    assert "ignored a malformed frame" in svc.log()
    assert_same_link(svc, status, mark)
    health_ok(svc)
    stops_clean(svc)


def test_deeply_nested_json_is_just_another_malformed_frame(services: Services, callers: Callers) -> None:
    svc = services.start(events=True, extra={"health": {"interval": 5.0}})
    status = ready(svc)
    mark = svc.peer.mark()
    slow = callers.start(svc, "rpc", "double.sleep", '{"ms": 1000}', "--timeout", "10")
    poll(lambda: requests_seen(svc, "double.sleep"), 10, "the slow call to reach the double")
    nested = "[" * 5000 + "]" * 5000
    garbage = cli(svc, "rpc", "double.garbage", json.dumps({"frames": [nested]}))
    assert garbage.returncode == 0, garbage.stderr
    code, out, err = finish(slow)
    assert code == 0, err
    assert json.loads(out) == {"sleptMs": 1000}
    assert "Traceback" not in svc.log()
    assert_same_link(svc, status, mark)
    health_ok(svc)
    stops_clean(svc)


def test_a_request_over_max_payload_is_refused_before_sending_and_the_link_stays(services: Services) -> None:
    limit = 4096
    svc = services.start(double_env={"DOUBLE_MAX_PAYLOAD": str(limit)}, events=True)
    status = ready(svc)
    mark = svc.peer.mark()

    too_big = cli(svc, "rpc", "double.sleep", json.dumps({"ms": 1, "pad": "x" * (limit + 100)}))
    assert too_big.returncode == exitcodes.FAIL
    assert "PAYLOAD_TOO_LARGE" in too_big.stderr and str(limit) in too_big.stderr, too_big.stderr
    assert too_big.stdout == ""
    assert requests_seen(svc, "double.sleep") == [], "an oversize request must not reach the gateway"

    fits = cli(svc, "rpc", "double.sleep", json.dumps({"ms": 1, "pad": "x" * (limit - 300)}))
    assert fits.returncode == 0, fits.stderr
    assert len(requests_seen(svc, "double.sleep")) == 1
    assert_same_link(svc, status, mark)
    health_ok(svc)
    stops_clean(svc)


def huge_reply(services: Services, size: int) -> None:
    svc = services.start(double_env={"DOUBLE_MAX_PAYLOAD": "4096"})
    status = ready(svc)
    mark = svc.peer.mark()
    huge = cli(svc, "rpc", "double.huge", json.dumps({"bytes": size}))
    assert huge.returncode == 0, huge.stderr[-2000:]
    assert json.loads(huge.stdout) == {"data": "x" * size}
    assert_same_link(svc, status, mark)
    health_ok(svc)
    stops_clean(svc)


def test_a_reply_far_over_max_payload_is_delivered_whole(services: Services) -> None:
    huge_reply(services, 300_000)  # 70 x the granted maxPayload, which limits what we send, not what we get


def test_a_multi_megabyte_reply_does_not_stall_the_link(services: Services) -> None:
    huge_reply(services, 8_000_000)  # a third of the real gateway's 25 MB maxPayload


def test_protocol_mismatch_is_a_config_error_naming_both_versions(services: Services) -> None:
    svc = services.start(double_env={"DOUBLE_PROTOCOL": "5"})
    assert svc.wait(30) == exitcodes.CONFIG
    lines = error_lines(svc, "protocol mismatch")
    assert len(lines) == 1, svc.log()[-3000:]
    assert "gateway speaks protocol 5" in lines[0] and "clawsvc speaks 3..4" in lines[0]
    assert len(spawned(svc)) == 1 and "restarting in" not in svc.log()
    assert not svc.peer.find("^READY=1")
    assert last_status(svc).startswith("error: protocol mismatch")
    assert svc.leftovers() == []
