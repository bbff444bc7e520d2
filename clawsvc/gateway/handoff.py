"""A fresh-process restart's handoff: a gateway that restarts itself as a new process (only when gateway.env turns
off clawsvc's OPENCLAW_NO_RESPAWN=1) drains, writes a row for its supervisor and exits 0. The supervisor consumes
that row with the gateway's own CLI (`openclaw gateway restart-handoff consume --expected-pid PID --json`), which
answers {"status": "accepted" | "none" | "rejected", "reason": ...}; only "accepted" makes the exit a planned
restart. The CLI needs the gateway's state dir and config path, never its token; its cold start takes 6-36 s here."""

from __future__ import annotations

import json
from collections.abc import Mapping

from clawsvc.boundedrun import Unfinished, run_bounded
from clawsvc.config import Config
from clawsvc.config.values import TOKEN_ENV
from clawsvc.text import cut, printable

CONSUME_TIMEOUT = 90.0
MAX_OUTPUT = 64 * 1024


def consume(config: Config, pid: int, env: Mapping[str, str]) -> tuple[bool, str]:
    """(accepted, what the CLI said) for the handoff of gateway `pid`; `env` is the gateway's own environment."""
    argv = [*config.gateway.command, "gateway", "restart-handoff", "consume", "--expected-pid", str(pid), "--json"]
    quiet = {key: value for key, value in env.items() if key != TOKEN_ENV}
    try:
        done = run_bounded(argv, env=quiet, timeout=CONSUME_TIMEOUT, cap=MAX_OUTPUT)
    except Unfinished as exc:
        return False, f"the gateway's restart-handoff command failed: {exc}"
    text = done.output.decode("utf-8", "replace")
    try:  # stdout and stderr come in one pipe: the answer is the JSON object in it
        answer, _ = json.JSONDecoder().raw_decode(text, max(0, text.find("{")))
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict):
        return False, f"the gateway's restart-handoff command answered no JSON (exit {done.returncode})"
    status, reason = str(answer.get("status", "?")), str(answer.get("reason", ""))
    said = printable(cut(f"{status}" + (f" ({reason})" if reason else ""), 120))
    return status == "accepted", said
