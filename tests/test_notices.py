"""What clawsvc reads from the gateway's own log lines (clawsvc/gateway/notices.py), with the lines openclaw
2026.9.6 printed here while draining a turn (/work notes: SIGTERM 1 s into a 25 s model call)."""

from __future__ import annotations

from clawsvc.exits import ExitKind
from clawsvc.gateway.notices import SETTLED, TAIL_LINES, Notices, drain_notice, exit_cause
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


# ------------------------------------------------------------------ why it exited (the lines openclaw 2026.9.6 printed)

INVALID = ["Gateway failed to start: Invalid config at /var/lib/clawsvc/openclaw/openclaw.json:",
           '<root>: Unrecognized key: "bogusKey"', 'Run "openclaw doctor --fix" to repair, then retry.']
MISSING = ["Missing config. Run `openclaw setup` or set gateway.mode=local (or pass --allow-unconfigured)."]
NO_MODE = ["Gateway start blocked: existing config is missing gateway.mode. Treat this as suspicious or clobbered "
           "config. Re-run `openclaw onboard --mode local` or `openclaw setup`, set gateway.mode=local manually, or "
           "pass --allow-unconfigured."]
SCHEMA = ["[gateway] refused startup because 1 OpenClaw database schema(s) are newer than this build. state database "
          "/var/lib/clawsvc/openclaw/state/openclaw.sqlite uses schema 18; this build supports 17; writer build "
          "2026.9.6. Refused by OpenClaw 2026.9.5 (ec9c1a1) installed at /opt/x. Run a build at least as new as "
          "the writer that supports these schemas, or stop the service and restore your pre-upgrade backup."]
LOCKED = ["Doctor could not enter maintenance. GatewayLockError: Legacy Gateway lock /var/lib/clawsvc/openclaw/tmp/"
          "openclaw-999/gateway.6b4f5056.lock still has a live or unverified owner (PID 15965). Stop the Gateway "
          "service and other OpenClaw processes using this state, then run openclaw doctor --fix from an "
          "independent shell.",
          "[gateway] requires state migration. Stop the service with openclaw gateway stop (or its service owner)"]
PORT = ["Gateway failed to start: another gateway instance is already listening on ws://127.0.0.1:18789 | listen "
        "EADDRINUSE: address already in use 127.0.0.1:18789 | EADDRINUSE"]


def test_an_invalid_config_is_named_with_its_file_and_problem() -> None:
    cause = exit_cause(["[gateway] starting", *INVALID])
    assert cause is not None and cause.kind is ExitKind.CONFIG
    assert cause.text == ("the gateway's own config /var/lib/clawsvc/openclaw/openclaw.json is invalid (<root>: "
                          'Unrecognized key: "bogusKey"); fix it, or run `clawsvc openclaw doctor --fix`')


def test_each_exit_the_gateway_explains_gets_its_kind() -> None:
    kinds = {name: exit_cause(lines) for name, lines in
             (("missing", MISSING), ("no-mode", NO_MODE), ("schema", SCHEMA), ("port", PORT), ("locked", LOCKED))}
    assert {name: cause.kind for name, cause in kinds.items() if cause} == {
        "missing": ExitKind.CONFIG, "no-mode": ExitKind.CONFIG, "schema": ExitKind.SCHEMA, "port": ExitKind.PORT,
        "locked": ExitKind.LOCKED}
    locked = kinds["locked"]
    assert locked is not None and "(pid 15965)" in locked.text and "gateway.state_dir" in locked.text
    schema = kinds["schema"]
    assert schema is not None and "uses schema 18; this build supports 17" in schema.text
    assert "clawsvc upgrade VERSION" in schema.text and "\n" not in schema.text
    assert exit_cause(["[gateway] ready", "[shutdown] completed cleanly in 86ms"]) is None
