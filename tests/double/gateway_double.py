"""A stand-in for the OpenClaw gateway: a real child process that speaks protocol 4 and misbehaves on request.

Invocation (what clawsvc appends to gateway.command; unknown extra flags are ignored):
    python gateway_double.py gateway run --port P --bind loopback --auth token [--allow-unconfigured]
The token comes from $OPENCLAW_GATEWAY_TOKEN (required, never printed). Binds 127.0.0.1:P whatever --bind says.
Log lines go to stdout/stderr as "<iso time> [subsystem] message"; warnings/errors go to stderr and carry a
level word (WARN, ERROR) so output pumps can be tested.

Env knobs (all optional):
    DOUBLE_STARTUP_DELAY=S       nothing listens for S seconds after start
    DOUBLE_UNAVAILABLE_FOR=S     then for S seconds `connect` gets UNAVAILABLE (retryAfterMs 500) + close 1013
    DOUBLE_TICK_MS=N             tick event interval, also hello-ok policy.tickIntervalMs (default 30000)
    DOUBLE_PROTOCOL=N            protocol version served (default 4)
    DOUBLE_VERSION=V             server.version in hello-ok (default double-1)
    DOUBLE_MAX_PAYLOAD=N         policy.maxPayload and the inbound frame limit (default 26214400)
    DOUBLE_HANDSHAKE_TIMEOUT=S   close 1000 when no connect arrives within S seconds (default 15)
    DOUBLE_EXIT_AFTER=S          exit S seconds after start with DOUBLE_EXIT_CODE (default 1; 78 prints
                                 "Missing config")
    DOUBLE_IGNORE_SIGTERM=1      log and ignore SIGTERM/SIGINT
    DOUBLE_SPAWN_CHILD=1         start one sleeping grandchild in our process group; prints "[double] child pid N"
    DOUBLE_RESTART_EXPECTED_MS=N add restartExpectedMs to the shutdown event sent on SIGTERM
    DOUBLE_STDOUT_LINES / DOUBLE_STDERR_LINES   lines (\\n-separated) printed verbatim at startup
    DOUBLE_EVENT_FILE=PATH       append one JSON line per received request (tokens masked)

Protocol (as openclaw@2026.9.6): connect.challenge first (no seq); `connect` checked in the real order (first
request must be connect → 1008; startup window → UNAVAILABLE/1013; client.id/mode enums → 1008; protocol range
→ PROTOCOL_MISMATCH/1002; token → AUTH_TOKEN_MISMATCH/1008); an Origin header grants no scopes (then `status`
fails FORBIDDEN/MISSING_SCOPE). After hello-ok every event has seq 1, 2, ... per connection. Methods: health,
status, double.*; anything else → INVALID_REQUEST "unknown method: X". Frames over DOUBLE_MAX_PAYLOAD → 1009.
SIGTERM/SIGINT: event shutdown {reason:"gateway stopping"} to connected clients, close 1012, exit 0.
HTTP on the same port: GET /healthz → 200; /startupz → 200 {"status":"started"} once connect would succeed, else
503 {"status":"starting"}; /readyz → 200 {"ready":true,"failing":[]}, else 503 with failing ["startup-sidecars"].

Control methods (after connect; all reply ok unless noted):
    double.garbage {frames?}     send frames (str as-is, others JSON-encoded); default: non-JSON text, a JSON
                                 array, an unknown type, a res without id, a binary frame
    double.silence {}            reply, then send nothing more on this connection (the library still answers pings)
    double.freeze {}             reply, then like silence and stop reading the socket: pings go unanswered
    double.flood {count, event?, nested?}  send `count` events (default name "flood") back to back, then reply;
                                 with `nested`, each payload is that many empty lists ([[],[],...]), else {"i": i}
    double.seqgap {skip}         the next event's seq is the last one + 1 + skip
    double.huge {bytes}          reply {"data": "x" * bytes}
    double.legacy {}             send JSON-RPC 2.0 frames: notifications and responses to ids never asked for
    double.sleep {ms}            reply after ms, without holding up other requests
    double.event {event, payload}  emit that event (with seq), then reply
    double.close {code, reason}  reply, then close the connection with that code
    double.exit {code}           reply, then exit the process with that code at once
    double.hang {ms?}            reply, then block the whole event loop (forever without ms)
    double.log {stream, lines}   print lines to "stdout" or "stderr"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from double_protocol import (
    READ_SCOPES,
    VERSION,
    check_connect,
    error,
    granted_scopes,
    hello_ok,
    parse_request,
)
from double_session import Session, log, now_ms
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass(frozen=True)
class Knobs:
    startup_delay: float = 0.0
    unavailable_for: float = 0.0
    tick_ms: int = 30000
    protocol: int = 4
    max_payload: int = 26214400
    handshake_timeout: float = 15.0
    exit_after: float | None = None
    exit_code: int = 1
    ignore_sigterm: bool = False
    spawn_child: bool = False
    restart_expected_ms: int | None = None
    stdout_lines: str = ""
    stderr_lines: str = ""
    event_file: str | None = None

    @classmethod
    def from_env(cls) -> Knobs:
        env = os.environ
        return cls(
            startup_delay=env_number("DOUBLE_STARTUP_DELAY", 0.0),
            unavailable_for=env_number("DOUBLE_UNAVAILABLE_FOR", 0.0),
            tick_ms=int(env_number("DOUBLE_TICK_MS", 30000)),
            protocol=int(env_number("DOUBLE_PROTOCOL", 4)),
            max_payload=int(env_number("DOUBLE_MAX_PAYLOAD", 26214400)),
            handshake_timeout=env_number("DOUBLE_HANDSHAKE_TIMEOUT", 15.0),
            exit_after=env_number("DOUBLE_EXIT_AFTER", -1) if env.get("DOUBLE_EXIT_AFTER") else None,
            exit_code=int(env_number("DOUBLE_EXIT_CODE", 1)),
            ignore_sigterm=env.get("DOUBLE_IGNORE_SIGTERM") == "1",
            spawn_child=env.get("DOUBLE_SPAWN_CHILD") == "1",
            restart_expected_ms=int(env_number("DOUBLE_RESTART_EXPECTED_MS", 0))
            if env.get("DOUBLE_RESTART_EXPECTED_MS") else None,
            stdout_lines=env.get("DOUBLE_STDOUT_LINES", ""),
            stderr_lines=env.get("DOUBLE_STDERR_LINES", ""),
            event_file=env.get("DOUBLE_EVENT_FILE") or None,
        )


class Gateway:
    """The double's process: startup window, listener, signals and every connection's frames."""

    def __init__(self, knobs: Knobs, port: int, token: str) -> None:
        self.knobs, self.port, self.token = knobs, port, token
        self.boot_id = str(uuid.uuid4())
        self.started = time.monotonic()
        self.listen_at: float | None = None
        self.sessions: set[Session] = set()
        self.stop = asyncio.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def uptime_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)

    # -- process lifecycle -------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal, sig)
        if self.knobs.exit_after is not None:
            loop.call_later(self.knobs.exit_after, self.scripted_exit)
        log(f"[gateway] starting {VERSION} (pid {os.getpid()})")
        self.print_startup_lines()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), self.knobs.startup_delay)
        if self.stop.is_set():
            return self.finish(0)
        try:
            server = await serve(self.handle, "127.0.0.1", self.port, process_request=self.http_probe,
                                 ping_interval=None, max_size=self.knobs.max_payload, close_timeout=2)
        except OSError as exc:
            log(f"[gateway] ERROR another gateway instance is already listening on ws://127.0.0.1:{self.port} "
                f"({exc.strerror})", err=True)
            return self.finish(1)
        self.listen_at = time.monotonic()
        log(f"[gateway] listening on ws://127.0.0.1:{self.port} (PID {os.getpid()})")
        loop.call_later(self.knobs.unavailable_for, self.announce_ready)
        await self.stop.wait()
        await self.shutdown(server)
        return self.finish(0)

    def print_startup_lines(self) -> None:
        for text, err in ((self.knobs.stdout_lines, False), (self.knobs.stderr_lines, True)):
            for line in text.splitlines():
                print(line, file=sys.stderr if err else sys.stdout, flush=True)
        if self.knobs.spawn_child:
            code = "import time\nwhile True: time.sleep(1000)"
            self.child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
            log(f"[double] child pid {self.child.pid}")

    def announce_ready(self) -> None:
        log("[gateway] ready")
        log("[gateway] WARN remote model catalog refresh failed (offline)", err=True)

    def on_signal(self, sig: signal.Signals) -> None:
        if self.knobs.ignore_sigterm:
            log(f"[gateway] WARN received {sig.name}; ignoring it (DOUBLE_IGNORE_SIGTERM=1)", err=True)
            return
        log(f"[gateway] received {sig.name}; shutting down")
        self.stop.set()

    def scripted_exit(self) -> None:
        code = self.knobs.exit_code
        if code == 78:
            log("[gateway] ERROR Missing config. Run `openclaw setup` or set gateway.mode=local "
                "(or pass --allow-unconfigured).", err=True)
        else:
            log(f"[gateway] ERROR fatal: scripted exit after {self.knobs.exit_after}s with code {code}", err=True)
        os._exit(code)

    async def shutdown(self, server: Server) -> None:
        payload: dict[str, Any] = {"reason": "gateway stopping"}
        if self.knobs.restart_expected_ms is not None:
            payload["restartExpectedMs"] = self.knobs.restart_expected_ms
        await asyncio.gather(*(self.say_goodbye(s, payload) for s in list(self.sessions)))
        server.close()
        await server.wait_closed()

    async def say_goodbye(self, s: Session, payload: dict[str, Any]) -> None:
        if s.frozen:
            s.ws.transport.abort()
            return
        with contextlib.suppress(ConnectionClosed):
            if s.scopes is not None:
                await s.event("shutdown", payload)
            await s.ws.close(1012, "gateway stopping")

    def finish(self, code: int) -> int:
        if self.child is not None:
            self.child.terminate()
            self.child.wait()
        log("[shutdown] completed cleanly" if code == 0 else f"[gateway] ERROR exiting with code {code}",
            err=code != 0)
        return code

    def starting(self) -> bool:
        return self.listen_at is None or time.monotonic() < self.listen_at + self.knobs.unavailable_for

    def http_probe(self, ws: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?")[0]
        if path == "/healthz":
            return ws.respond(200, '{"ok":true}\n')
        if path == "/startupz":
            return ws.respond(503, '{"ok":false,"status":"starting"}\n') if self.starting() else \
                ws.respond(200, '{"ok":true,"status":"started"}\n')
        if path == "/readyz":
            return ws.respond(503, '{"ready":false,"failing":["startup-sidecars"]}\n') if self.starting() else \
                ws.respond(200, '{"ready":true,"failing":[]}\n')
        return None

    # -- connections ------------------------------------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        s = Session(ws)
        self.sessions.add(s)
        try:
            await s.send({"type": "event", "event": "connect.challenge",
                          "payload": {"nonce": str(uuid.uuid4()), "ts": now_ms(), "capabilities": []}})
            if await self.handshake(s):
                s.spawn(self.ticker(s))
                async for message in ws:
                    await self.on_frame(s, message)
                    if s.frozen:
                        await self.stop.wait()
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(s)
            for task in list(s.tasks):
                task.cancel()

    async def handshake(self, s: Session) -> bool:
        try:
            raw = await asyncio.wait_for(s.ws.recv(), self.knobs.handshake_timeout)
        except TimeoutError:
            log(f"[ws] WARN handshake timeout conn={s.conn_id}", err=True)
            await s.ws.close(1000)
            return False
        try:
            frame = parse_request(raw)
        except ValueError:
            log(f"[ws] WARN parse error before connect conn={s.conn_id}; closing", err=True)
            await s.ws.close(1000)
            return False
        if frame is None:
            log(f"[ws] WARN invalid handshake frame conn={s.conn_id}; closing", err=True)
            await s.ws.close(1008, "invalid request frame")
            return False
        self.record(s, frame)
        params = frame.get("params")
        rejected = check_connect(frame["method"], params, token=self.token, protocol=self.knobs.protocol,
                                 starting=self.starting())
        if rejected is not None:
            log(f"[ws] WARN connect rejected conn={s.conn_id} {rejected.log_reason}", err=True)
            await s.reply(frame["id"], err=rejected.error)
            await s.ws.close(rejected.close_code, rejected.close_reason)
            return False
        assert isinstance(params, dict)
        s.scopes = granted_scopes(params, has_origin="Origin" in s.ws.request.headers if s.ws.request else False)
        hello = hello_ok(protocol=self.knobs.protocol, boot_id=self.boot_id, conn_id=s.conn_id,
                         uptime_ms=self.uptime_ms(), role=str(params.get("role") or "operator"), scopes=s.scopes,
                         max_payload=self.knobs.max_payload, tick_ms=self.knobs.tick_ms)
        await s.reply(frame["id"], hello)
        return True

    async def ticker(self, s: Session) -> None:
        while True:
            await asyncio.sleep(self.knobs.tick_ms / 1000)
            await s.event("tick", {"ts": now_ms()})

    def record(self, s: Session, frame: dict[str, Any]) -> None:
        if self.knobs.event_file is None:
            return
        params = frame.get("params")
        if isinstance(params, dict) and isinstance(params.get("auth"), dict):
            params = {**params, "auth": dict.fromkeys(params["auth"], "***")}
        line = {"ts": now_ms(), "conn": s.conn_id, "id": frame["id"], "method": frame["method"], "params": params}
        with open(self.knobs.event_file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    async def on_frame(self, s: Session, raw: str | bytes) -> None:
        if s.silent:
            return
        if isinstance(raw, bytes):
            log(f"[ws] WARN binary frame ignored conn={s.conn_id}", err=True)
            return
        try:
            frame = parse_request(raw)
        except ValueError:
            log(f"[ws] WARN parse-error (not JSON) conn={s.conn_id}", err=True)
            return
        if frame is None:
            await s.reply("invalid", err=error("INVALID_REQUEST", "invalid request frame"))
            return
        self.record(s, frame)
        rid, method = frame["id"], frame["method"]
        params = frame.get("params") if isinstance(frame.get("params"), dict) else {}
        if method == "connect":
            await s.reply(rid, err=error("INVALID_REQUEST", "connect already completed"))
        elif method in ("health", "status"):
            await self.read_method(s, rid, method)
        elif not (method.startswith("double.") and await s.control(rid, method, params)):
            await s.reply(rid, err=error("INVALID_REQUEST", f"unknown method: {method}"))

    async def read_method(self, s: Session, rid: str, method: str) -> None:
        if method == "health":
            await s.reply(rid, {"ok": True, "ts": now_ms(), "durationMs": 0, "uptimeMs": self.uptime_ms()})
        elif not s.has_scope(READ_SCOPES):
            await s.reply(rid, err=error("FORBIDDEN", "missing scope: operator.read",
                                         details={"code": "MISSING_SCOPE", "missingScope": "operator.read"}))
        else:
            await s.reply(rid, {"runtimeVersion": VERSION, "pid": os.getpid(), "port": self.port,
                                "uptimeMs": self.uptime_ms(), "connections": len(self.sessions)})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gateway_double", add_help=False)
    parser.add_argument("words", nargs="*")
    parser.add_argument("--port", type=int, default=int(os.environ.get("OPENCLAW_GATEWAY_PORT") or 18789))
    parser.add_argument("--bind", default="loopback")
    parser.add_argument("--auth", default="token")
    args, _unknown = parser.parse_known_args(argv)
    if args.words[:2] != ["gateway", "run"]:
        log(f"[double] ERROR expected `gateway run ...`, got {args.words!r}", err=True)
        return 2
    token = os.environ.get("OPENCLAW_GATEWAY_TOKEN", "")
    if not token:
        log("[gateway] ERROR gateway auth mode is token but no token is configured (set OPENCLAW_GATEWAY_TOKEN)",
            err=True)
        return 78
    return asyncio.run(Gateway(Knobs.from_env(), args.port, token).run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
