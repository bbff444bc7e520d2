"""What clawsvc reads from the gateway's own log lines (clawsvc/gateway/notices.py), with the lines openclaw
2026.9.6 printed here while draining a turn (/work notes: SIGTERM 1 s into a 25 s model call)."""

from __future__ import annotations

from clawsvc.gateway.notices import SETTLED, TAIL_LINES, Notices, drain_notice
from clawsvc.logs import register_secret

DRAINING = ("[gateway] draining active work before stop with timeout 315000ms: queueSize=2 pendingReplies=1 "
            "embeddedRuns=1 sessionAdmissions=2 rootRequests=1")


def test_a_drain_line_becomes_what_it_still_waits_for() -> None:
    assert drain_notice(DRAINING) == ("waiting for queueSize=2 pendingReplies=1 embeddedRuns=1 sessionAdmissions=2 "
                                      "rootRequests=1")
    assert drain_notice("[gateway] draining active work before restart: queueSize=0 pendingReplies=3") == \
        "waiting for pendingReplies=3"
    assert drain_notice("[gateway] active-work drain settled; beginning server close") == SETTLED


def test_other_lines_and_all_zero_counts_say_nothing() -> None:
    assert drain_notice("[gateway] draining active work before stop with timeout 1ms: queueSize=0") is None
    assert drain_notice("[gateway] shutdown budget at shutdown: drain=315000ms shutdown=325000ms") is None
    assert drain_notice("[gateway] received SIGTERM; shutting down") is None


def test_notices_keep_a_redacted_bounded_tail_and_report_drains() -> None:
    heard: list[str] = []
    notices = Notices(heard.append)
    secret = "sk-notices-" + "q" * 20
    register_secret(secret)
    notices.see(f"[gateway] key {secret} rejected")
    notices.see(DRAINING)
    for number in range(TAIL_LINES):
        notices.see(f"line {number} " + "x" * 5000)
    tail = notices.tail()
    assert len(tail) == TAIL_LINES and tail[-1].startswith(f"line {TAIL_LINES - 1} ")
    assert all(len(line) <= 1001 for line in tail)
    assert heard == ["waiting for queueSize=2 pendingReplies=1 embeddedRuns=1 sessionAdmissions=2 rootRequests=1"]
    notices = Notices()
    notices.see(f"[gateway] key {secret} rejected")
    assert secret not in notices.tail()[0]
