"""Real agent turns against the real gateway: a slow model of the tests' own (tests/helpers/slow_model.py) as
the gateway's provider `fake`, a client that keeps the gateway's events, and `clawsvc events --follow`.

    with SlowModel(delay=25) as model, SlowModelGateway(gateway_install, model.base_url) as gateway:
        link = Link(gateway.url, gateway.token)
        run_id = send_turn(link, "hello")["runId"]
        events = link.chat_run(run_id, timeout=120)       # chat payloads of that run, up to final/error/aborted
        assert events[-1]["state"] == "final" and reply_text(events[-1]) == model.reply

For a real `clawsvc run`: `slow_service_config(root, installation, port, model.base_url)` is a clawsvc config
whose gateway.state_dir holds the openclaw.json (so clawsvc starts the gateway without --allow-unconfigured)
and whose gateway.env leaves providers on. Once it is ready:

    follower = EventsFollower(svc)                       # `clawsvc events --follow --json`
    follower.wait_subscribed(svc)
    run_id = send_turn_through(svc, "hello")["runId"]    # chat.send over the control socket (`clawsvc rpc`)
    events = follower.chat_run(run_id, timeout=120)      # what that consumer saw of the run
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import websocket
from helpers.slow_model import MODEL_ID
from realgw import GatewayError, RealGateway, connect, gateway_env
from service_proc import ServiceProcess, base_config, merge
from waiting import poll

from clawsvc.commands.runtime.provision import Installation

PROVIDER = "fake"
TERMINAL = ("final", "error", "aborted")
SESSION_KEY = "main"
START_TIMEOUT = 180.0  # seconds; a gateway start took 7-75 s here with other test runs on the same 2 cores
_ids = itertools.count(1)


def model_config(base_url: str, model_id: str = MODEL_ID) -> dict[str, Any]:
    """The openclaw.json part that makes `fake/<model_id>` at base_url the default agent model."""
    model = {"id": model_id, "name": "clawsvc tests' slow model", "reasoning": False, "input": ["text"],
             "contextWindow": 120000, "maxTokens": 4096,
             "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}}
    return {"agents": {"defaults": {"model": {"primary": f"{PROVIDER}/{model_id}"}}},
            "models": {"mode": "merge", "providers": {PROVIDER: {"baseUrl": base_url, "apiKey": "x",
                                                                "api": "openai-completions", "models": [model]}}}}


def slow_model_env(state_dir: Path, port: int, base_url: str) -> dict[str, str]:
    """realgw.gateway_env with providers on and state_dir/openclaw.json pointing the agent at the slow model."""
    env = gateway_env(state_dir, port)
    config_path = state_dir / "openclaw.json"
    config = merge(json.loads(config_path.read_text()), model_config(base_url))
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    env.pop("OPENCLAW_SKIP_PROVIDERS", None)
    return env


class SlowModelGateway(RealGateway):
    """A RealGateway whose agent turns go to the slow model at base_url."""

    def __init__(self, installation: Installation, base_url: str, root: Path | None = None) -> None:
        super().__init__(installation, root)
        self.base_url = base_url

    def environment(self) -> dict[str, str]:
        return dict(slow_model_env(self.state_dir, self.port, self.base_url), OPENCLAW_GATEWAY_TOKEN=self.token)


def slow_service_config(root: Path, installation: Installation, port: int, base_url: str) -> dict[str, Any]:
    """A `clawsvc run` config (service_proc.base_config, its short stop_timeout included: merge what a test needs)
    whose gateway turns go to the slow model at base_url; start_timeout fits a loaded 2-core machine."""
    state = root / "state"
    env = slow_model_env(state, port, base_url)
    state.chmod(0o700)
    return merge(base_config(root, installation.command, port),
                 {"gateway": {"env": env, "start_timeout": START_TIMEOUT}})


class Link:
    """An operator WebSocket that keeps every event it reads, with its arrival time (realgw.call drops them),
    and notes how the gateway closed it."""

    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.ws, self.hello = connect(url, token, timeout=timeout)
        self.events: list[tuple[float, dict[str, Any]]] = []  # (time.monotonic(), event frame)
        self.closed: tuple[float, int | None, str] | None = None  # (when, close code, reason)
        self._responses: dict[str, dict[str, Any]] = {}

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """One request; events read meanwhile are kept. GatewayError on ok:false."""
        request_id = f"k{next(_ids)}"
        self.ws.send(json.dumps({"type": "req", "id": request_id, "method": method, "params": params or {}}))
        self._read_until(lambda: request_id in self._responses, timeout, f"the answer to {method}")
        frame = self._responses.pop(request_id)
        if not frame.get("ok"):
            raise GatewayError(method, frame.get("error") or {})
        return frame.get("payload")

    def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        """The first kept event (frame) matching predicate, reading on until it comes."""
        def found() -> dict[str, Any] | None:
            return next((frame for _, frame in self.events if predicate(frame)), None)
        self._read_until(lambda: found() is not None, timeout, what)
        result = found()
        assert result is not None
        return result

    def chat_run(self, run_id: str, timeout: float) -> list[dict[str, Any]]:
        """The `chat` event payloads of run_id, up to and including its final/error/aborted one."""
        self.wait_event(lambda f: _is_chat(f, run_id) and f["payload"].get("state") in TERMINAL, timeout,
                        f"a terminal chat event of run {run_id}")
        return [frame["payload"] for _, frame in self.events if _is_chat(frame, run_id)]

    def wait_closed(self, timeout: float) -> tuple[float, int | None, str]:
        self._read_until(lambda: self.closed is not None, timeout, "the gateway to close the socket")
        assert self.closed is not None
        return self.closed

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close(timeout=1)

    def _read_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.closed is not None:
                raise ConnectionError(f"socket closed ({self.closed[1]} {self.closed[2]!r}) before {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout:g}s")
            self._read_one(left)

    def _read_one(self, timeout: float) -> None:
        self.ws.settimeout(timeout)
        try:
            opcode, frame = self.ws.recv_data_frame(True)
        except websocket.WebSocketTimeoutException:
            return
        except (OSError, websocket.WebSocketConnectionClosedException):
            self.closed = (time.monotonic(), None, "connection lost without a close frame")
            return
        now = time.monotonic()
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = bytes(frame.data)
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            self.closed = (now, code, data[2:].decode(errors="replace"))
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(frame.data)
            if message.get("type") == "res":
                self._responses[str(message.get("id"))] = message
            elif message.get("type") == "event":
                self.events.append((now, message))


def turn_params(message: str, session_key: str = SESSION_KEY, idempotency_key: str | None = None) -> dict[str, Any]:
    """chat.send's params: one user message to the session."""
    return {"sessionKey": session_key, "message": message, "idempotencyKey": idempotency_key or str(uuid.uuid4())}


def send_turn(link: Link, message: str, session_key: str = SESSION_KEY,
              idempotency_key: str | None = None) -> dict[str, Any]:
    """chat.send on a Link; returns the gateway's {"runId", "status"}."""
    return _started(link.call("chat.send", turn_params(message, session_key, idempotency_key)))


def send_turn_through(svc: ServiceProcess, message: str, session_key: str = SESSION_KEY) -> dict[str, Any]:
    """chat.send through a running clawsvc's control socket (as `clawsvc rpc chat.send`)."""
    return _started(svc.request({"cmd": "rpc", "method": "chat.send", "params": turn_params(message, session_key)},
                                timeout=60.0))


def _started(result: Any) -> dict[str, Any]:
    assert isinstance(result, dict) and result.get("runId"), f"chat.send answered {result!r}"
    return result


def reply_text(payload: dict[str, Any]) -> str:
    """The text of a chat event's message (its content parts joined)."""
    message = payload.get("message") or {}
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(str(part.get("text", "")) for part in content or [] if isinstance(part, dict))


def _is_chat(frame: dict[str, Any], run_id: str) -> bool:
    return frame.get("event") == "chat" and (frame.get("payload") or {}).get("runId") == run_id


class EventsFollower:
    """`clawsvc events --follow --json` against a ServiceProcess, its lines collected by a thread as they come."""

    def __init__(self, svc: ServiceProcess) -> None:
        argv = [sys.executable, "-m", "clawsvc", "events", "-c", str(svc.config_path), "--follow", "--json"]
        self.popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.lines: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, name="clawsvc-test-follower", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(json.loads(line))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [event for event in list(self.lines) if event["name"] == name]

    def wait_subscribed(self, svc: ServiceProcess, timeout: float = 60.0) -> None:
        """Until this follower sees an event: a reload that changes nothing (SIGHUP) is one every follower gets."""
        def subscribed() -> bool:
            if not self.named("reload"):
                if self.popen.poll() is not None:
                    raise AssertionError(f"clawsvc events --follow exited {self.popen.returncode}: {self.stderr()}")
                svc.send_signal(signal.SIGHUP)
            return bool(self.named("reload"))
        poll(subscribed, timeout, "the follower to be subscribed (a reload event)", every=1.0)

    def chat_run(self, run_id: str, timeout: float) -> list[dict[str, Any]]:
        """The gateway `chat` payloads of run_id seen by this consumer, up to its final/error/aborted one."""
        def run() -> list[dict[str, Any]]:
            return [e["payload"] for e in self.named("chat")
                    if e.get("source") == "gateway" and (e.get("payload") or {}).get("runId") == run_id]
        poll(lambda: any(p.get("state") in TERMINAL for p in run()), timeout,
             f"a terminal chat event of run {run_id} on `clawsvc events --follow`", every=0.1)
        return run()

    def stderr(self) -> str:
        """What the follower wrote on stderr; only once it has exited (it would block before)."""
        assert self.popen.stderr is not None and self.popen.poll() is not None
        return self.popen.stderr.read()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.communicate()
        self._thread.join(5)
