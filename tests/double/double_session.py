"""One connection of the gateway double: event sequencing, replies and the scripted `double.*` misbehaviour.

Imported by gateway_double.py when it runs as a script (its directory is then sys.path[0]).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from double_protocol import error
from websockets.asyncio.server import ServerConnection

GARBAGE: list[Any] = [
    "this is not json {",
    [1, 2, 3],
    {"type": "mystery", "payload": {"x": 1}},
    {"type": "res", "ok": True, "payload": {"orphan": True}},
    b"\x00\x01binary frame",
]
LEGACY: list[dict[str, Any]] = [
    {"jsonrpc": "2.0", "method": "channel.status", "params": {"channel": "telegram", "status": "connected"}},
    {"jsonrpc": "2.0", "id": 987654321, "result": {"ok": True}},
    {"jsonrpc": "2.0", "id": "never-asked", "error": {"code": -32601, "message": "Method not found"}},
    {"jsonrpc": "2.0", "method": "chat", "params": {"text": "hello from a legacy gateway"}},
]


def log(line: str, err: bool = False) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
    print(f"{stamp} {line}", file=sys.stderr if err else sys.stdout, flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


class BadParams(Exception):
    pass


def int_param(params: dict[str, Any], name: str, default: int | None = None) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadParams(f"{name} must be an integer")
    return value


@dataclass(eq=False)
class Session:
    """One client connection: its event sequence and how it has been told to misbehave."""

    ws: ServerConnection
    conn_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    seq: int = 0
    skip: int = 0
    silent: bool = False
    frozen: bool = False
    scopes: list[str] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def send(self, frame: Any) -> None:
        if not self.silent:
            await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def event(self, name: str, payload: Any) -> None:
        if self.silent:
            return
        self.seq += 1 + self.skip
        self.skip = 0
        await self.send({"type": "event", "event": name, "payload": payload, "seq": self.seq})

    async def reply(self, req_id: Any, payload: Any = None, err: dict[str, Any] | None = None) -> None:
        frame: dict[str, Any] = {"type": "res", "id": req_id, "ok": err is None}
        frame.update({"error": err} if err else {"payload": payload})
        await self.send(frame)

    def spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def has_scope(self, wanted: frozenset[str]) -> bool:
        return bool(self.scopes and wanted.intersection(self.scopes))

    # -- double.* control methods -------------------------------------------------------------------------
    async def control(self, rid: str, method: str, params: dict[str, Any]) -> bool:
        """Run a double.* method; False when there is no such method."""
        handler: Callable[[str, dict[str, Any]], Awaitable[None]] | None = getattr(
            self, "do_" + method.removeprefix("double."), None)
        if handler is None:
            return False
        try:
            await handler(rid, params)
        except BadParams as exc:
            await self.reply(rid, err=error("INVALID_REQUEST", f"invalid {method} params: {exc}"))
        return True

    async def do_garbage(self, rid: str, params: dict[str, Any]) -> None:
        frames = params.get("frames", GARBAGE)
        if not isinstance(frames, list):
            raise BadParams("frames must be a list")
        for frame in frames:
            await self.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
        await self.reply(rid, {"sent": len(frames)})

    async def do_silence(self, rid: str, params: dict[str, Any]) -> None:
        await self.reply(rid, {"silent": True})
        self.silent = True
        log(f"[double] connection {self.conn_id} goes silent")

    async def do_freeze(self, rid: str, params: dict[str, Any]) -> None:
        self.ws.transport.pause_reading()
        self.frozen = True
        await self.reply(rid, {"frozen": True})
        self.silent = True
        log(f"[double] connection {self.conn_id} frozen: not reading the socket any more")

    async def do_flood(self, rid: str, params: dict[str, Any]) -> None:
        count = int_param(params, "count")
        name = params.get("event", "flood")
        nested = int_param(params, "nested", 0)
        for i in range(count):
            await self.event(name, [[] for _ in range(nested)] if nested else {"i": i})
        await self.reply(rid, {"sent": count})

    async def do_seqgap(self, rid: str, params: dict[str, Any]) -> None:
        self.skip = int_param(params, "skip")
        await self.reply(rid, {"skip": self.skip})

    async def do_huge(self, rid: str, params: dict[str, Any]) -> None:
        await self.reply(rid, {"data": "x" * int_param(params, "bytes")})

    async def do_legacy(self, rid: str, params: dict[str, Any]) -> None:
        for frame in LEGACY:
            await self.send(frame)
        await self.reply(rid, {"sent": len(LEGACY)})

    async def do_sleep(self, rid: str, params: dict[str, Any]) -> None:
        ms = int_param(params, "ms")
        self.spawn(self.reply_later(rid, ms))

    async def reply_later(self, rid: str, ms: int) -> None:
        await asyncio.sleep(ms / 1000)
        await self.reply(rid, {"sleptMs": ms})

    async def do_event(self, rid: str, params: dict[str, Any]) -> None:
        name = params.get("event")
        if not isinstance(name, str):
            raise BadParams("event must be a string")
        await self.event(name, params.get("payload"))
        await self.reply(rid, {"seq": self.seq})

    async def do_close(self, rid: str, params: dict[str, Any]) -> None:
        code = int_param(params, "code", 1000)
        await self.reply(rid, {"closing": code})
        await self.ws.close(code, str(params.get("reason", "")))

    async def do_exit(self, rid: str, params: dict[str, Any]) -> None:
        code = int_param(params, "code", 1)
        await self.reply(rid, {"exiting": code})
        log(f"[gateway] ERROR exiting with code {code} (double.exit)", err=True)
        os._exit(code)

    async def do_hang(self, rid: str, params: dict[str, Any]) -> None:
        ms = params.get("ms")
        await self.reply(rid, {"hanging": True})
        log("[double] hanging: blocking the event loop")
        # Deliberately blocking: the whole process must stop answering, signals included.
        if ms is None:
            while True:
                time.sleep(3600)
        time.sleep(int(ms) / 1000)
        log("[double] hang over")

    async def do_log(self, rid: str, params: dict[str, Any]) -> None:
        lines = params.get("lines", [])
        if not isinstance(lines, list):
            raise BadParams("lines must be a list")
        err = params.get("stream", "stdout") == "stderr"
        for line in lines:
            print(line, file=sys.stderr if err else sys.stdout, flush=True)
        await self.reply(rid, {"printed": len(lines)})
