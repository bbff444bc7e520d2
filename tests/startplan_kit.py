"""Shared by the start plan's tests: a free port, the early gateway of a `begin` (discarded afterwards), and a
test's own cache dir and cwd."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import poll

from clawsvc.service import startplan
from clawsvc.service.earlyspawn import EarlyGateway

CLI = ["run", "-c", "clawsvc.yaml"]


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def early(argv: list[str] = CLI) -> Iterator[EarlyGateway | str]:
    """`startplan.begin(argv)`: the early gateway (discarded on the way out) or why there is none."""
    found = startplan.begin(argv)
    try:
        yield found
    finally:
        if isinstance(found, EarlyGateway):
            found.discard()


def own_cache(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Plans under root/cache (as a unit's CacheDirectory=), root as the cwd, the plan switched on."""
    monkeypatch.setenv("CACHE_DIRECTORY", str(root / "cache"))
    monkeypatch.delenv(startplan.OFF_ENV, raising=False)
    monkeypatch.chdir(root)
    assert os.getcwd() == str(root)
    return root / "cache"


class PlanFiles:
    """What a plan names, under `root`: a cache dir, a config file, a state dir (0700), a token file (0600) and
    where the fake gateway records what it was given (`recorded`)."""

    def __init__(self, root: Path, token: str, root_mode: int) -> None:
        root.chmod(root_mode)
        self.root = root
        self.cache = root / "cache"
        self.config = root / "clawsvc.yaml"
        self.config.write_text("gateway: {port: 1}\n")
        self.state = root / "state"
        self.state.mkdir(mode=0o700)
        self.token = root / "token"
        self.token.write_text(token + "\n")
        self.token.chmod(0o600)
        self.record = root / "record"
        self.port = free_loopback_port()

    def recorded(self, what: str) -> str:
        path = Path(f"{self.record}.{what}")
        poll(lambda: path.exists() and path.read_text().endswith("\n"), 30, f"the fake gateway's {what}")
        return path.read_text()
