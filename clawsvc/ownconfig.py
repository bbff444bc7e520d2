"""The gateway's own config, openclaw.json in its state dir, as far as clawsvc is concerned.

Where there is none, the service writes a minimal one (gateway.mode local, token auth whose secret is a SecretRef to
the environment's OPENCLAW_GATEWAY_TOKEN, which is the token clawsvc hands the gateway), so that openclaw's own
tools agree with the service: `gateway auth-token --show` prints clawsvc's token, `doctor` finds gateway.mode set,
`status` and `dashboard` authenticate, and `doctor --generate-gateway-token` leaves the token alone ("managed by
SecretRef"). A token written into the file (`openclaw config set gateway.auth.token ...`) wins over the
environment's (measured with 2026.9.6: the gateway hot-reloads it and closes every client with 4001), so
`judge` says whether the file still takes its token from clawsvc, and FIX_ARGS is the gateway's own `config set`
that points it back. Root never parses this file, which the service user writes: it asks a child running as
that user (`python -m clawsvc.ownconfig STATE_DIR`, see judge_as), which is why this module imports no part of
clawsvc but its shared helpers: the child needs nothing but the standard library and them.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc import trust
from clawsvc.boundedrun import Account, Unfinished, clawsvc_module, run_bounded
from clawsvc.text import cut, shown
from clawsvc.users import describe_uid

GATEWAY_CONFIG = "openclaw.json"  # in gateway.state_dir
TOKEN_ENV = "OPENCLAW_GATEWAY_TOKEN"  # how clawsvc hands the gateway its token
AUTH_FIX = "sudo clawsvc doctor --fix"  # points openclaw.json's gateway.auth back at the token clawsvc hands it
REJECTS = "rejects clawsvc's token"  # how the service says it (status, STATUS=), and doctor recognises it
TOKEN_REF = {"source": "env", "provider": "default", "id": TOKEN_ENV}
MINIMAL = {"gateway": {"mode": "local", "auth": {"mode": "token", "token": TOKEN_REF}}}
# `openclaw config set gateway '<this>' --strict-json --merge`: the mode and the token back to clawsvc's, the rest
# of the file (and of gateway.auth) as it is. No secret in it: a reference to the environment.
FIX_ARGS = ("config", "set", "gateway", json.dumps({"mode": "local", "auth": {"mode": "token", "token": TOKEN_REF}},
                                                   separators=(",", ":")), "--strict-json", "--merge")
READ_CAP = 16 * 1024 ** 2
JUDGE_TIMEOUT = 30.0
JUDGE_CAP = 16 * 1024
_SHORTHANDS = (f"${{{TOKEN_ENV}}}", f"${TOKEN_ENV}")


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Verdict:
    level: Level
    text: str  # one line, naming the file and the key


def minimal_text() -> bytes:
    return (json.dumps(MINIMAL, indent=2) + "\n").encode()


def ensure_minimal(dir_fd: int) -> bool:
    """Write the minimal openclaw.json (0600) into the state dir open as `dir_fd` unless something is there; True
    when it was written. Through a temporary name and a link: never half-written, never written through a link."""
    with contextlib.suppress(FileNotFoundError):
        os.lstat(GATEWAY_CONFIG, dir_fd=dir_fd)
        return False
    tmp = f".{GATEWAY_CONFIG}.{os.getpid()}.{secrets.token_hex(4)}"
    trust.create_secret_at(dir_fd, tmp, minimal_text())
    try:
        os.link(tmp, GATEWAY_CONFIG, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False  # written meanwhile (by the gateway's CLI): theirs stays
    finally:
        os.unlink(tmp, dir_fd=dir_fd)
    return True


def _is_ours(token: Any) -> bool:
    if isinstance(token, str):
        return token.strip() in _SHORTHANDS
    return isinstance(token, dict) and token.get("source") == "env" and token.get("id") == TOKEN_ENV \
        and token.get("provider", "default") == "default"


def judge_config(config: Any, path: Path) -> Verdict:
    """Whether the parsed openclaw.json at `path` lets the gateway take clawsvc's token, in one line."""
    gateway = config.get("gateway") if isinstance(config, dict) else None
    gateway = gateway if isinstance(gateway, dict) else {}
    auth = gateway.get("auth") if isinstance(gateway.get("auth"), dict) else {}
    mode, token = auth.get("mode"), auth.get("token")
    if gateway.get("mode") != "local":
        return Verdict(Level.FAIL, f"{path} does not set gateway.mode to \"local\" ({shown(gateway.get('mode'))}): "
                                   f"the gateway refuses to start; run `{AUTH_FIX}`")
    if mode not in (None, "token"):
        return Verdict(Level.FAIL, f"{path} sets gateway.auth.mode to {shown(mode)}: the gateway no longer takes "
                                   f"clawsvc's token; run `{AUTH_FIX}`")
    if token is None:
        return Verdict(Level.WARN, f"{path} has no gateway.auth.token: the gateway takes clawsvc's token from its "
                                   "environment, but `openclaw doctor --generate-gateway-token` would write one of "
                                   f"its own there; run `{AUTH_FIX}`")
    if not _is_ours(token):
        return Verdict(Level.FAIL, f"{path} sets its own gateway.auth.token, which wins over clawsvc's: the gateway "
                                   f"rejects clawsvc's token; run `{AUTH_FIX}` to point it back at clawsvc's")
    return Verdict(Level.OK, f"{path} takes the gateway token from clawsvc ({TOKEN_ENV})")


def judge(state_dir: Path) -> Verdict:
    """judge_config of the file in `state_dir`, read here (as whoever we are), never through a link."""
    path = state_dir / GATEWAY_CONFIG
    try:
        data = trust.read_regular(path, GATEWAY_CONFIG, cap=READ_CAP, nofollow=True).data
    except FileNotFoundError:
        return Verdict(Level.OK, f"{path} does not exist yet; clawsvc writes it at the gateway's next start")
    except (OSError, trust.TrustError) as exc:
        return Verdict(Level.WARN, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        config = json.loads(data)
    except (ValueError, RecursionError):
        return Verdict(Level.WARN, f"{path} is not plain JSON (JSON5?), so clawsvc cannot check its gateway.auth; "
                                   "check it with `clawsvc openclaw config get gateway.auth`")
    return judge_config(config, path)


def judge_as(account: Account | None, state_dir: Path) -> Verdict:
    """judge(), for root in a child running as `account` (the file is that user's); here when account is None."""
    if account is None:
        return judge(state_dir)
    argv, env = clawsvc_module(__name__, str(state_dir))
    try:
        done = run_bounded(argv, env=env, timeout=JUDGE_TIMEOUT, cap=JUDGE_CAP, account=account)
        answer = json.loads(done.output.decode("utf-8", "replace").strip().splitlines()[-1])
        return Verdict(Level(answer["level"]), str(answer["text"]))
    except Unfinished as exc:
        problem = str(exc)
    except (IndexError, ValueError, KeyError, TypeError):
        said = done.output.decode("utf-8", "replace").strip().splitlines()
        problem = f"it exited {done.returncode} saying {shown(cut(said[-1], 200)) if said else 'nothing'}"
    return Verdict(Level.WARN, f"cannot check {state_dir / GATEWAY_CONFIG} as {describe_uid(account.uid)}: {problem}")


def main(argv: list[str]) -> int:
    """The child of judge_as: STATE_DIR; one JSON line {"level", "text"}."""
    if len(argv) != 1:
        print(json.dumps({"level": "warn", "text": f"usage: python -m {__name__} STATE_DIR"}))
        return 2
    verdict = judge(Path(argv[0]))
    print(json.dumps({"level": verdict.level.value, "text": verdict.text}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
