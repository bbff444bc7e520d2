"""Open one URL in a real headless Chromium and report what the page shows, read from its DOM (shadow roots
included) through the DevTools protocol; for tests of the gateway's Control UI. Run it where the URL's network is
(in a booted guest: `nsenter -t PID1 -n python browser_page.py ...`):

    python browser_page.py URL --until TEXT [--timeout S]

It starts `chromium --headless` with a fresh profile, navigates, and polls the page's visible text until TEXT is in
it or the timeout passes; prints one JSON object {"found": bool, "url": location.href, "text": the page's text,
"seconds": time to TEXT} and exits 0 (found) or 1. The browser and its profile are gone when it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-port=0")
# The page's text, through every open shadow root (the Control UI is made of web components).
DEEP_TEXT = """(() => {
  const parts = [];
  const walk = (node) => {
    if (node.nodeType === Node.TEXT_NODE) { const t = node.textContent.trim(); if (t) parts.push(t); return; }
    if (node.nodeType !== Node.ELEMENT_NODE && node.nodeType !== Node.DOCUMENT_FRAGMENT_NODE) return;
    if (node.nodeType === Node.ELEMENT_NODE && ['SCRIPT', 'STYLE', 'TEMPLATE'].includes(node.tagName)) return;
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.childNodes) walk(child);
  };
  walk(document.documentElement);
  return JSON.stringify({url: location.href, text: parts.join(' | ')});
})()"""
_ids = itertools.count(1)


def _devtools_port(profile: Path, browser: subprocess.Popen[bytes], deadline: float) -> int:
    active = profile / "DevToolsActivePort"
    pause = threading.Event()
    while time.monotonic() < deadline:
        if browser.poll() is not None:
            raise RuntimeError(f"chromium exited {browser.returncode} before its DevTools port was open")
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(active.read_text().splitlines()[0])
        pause.wait(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def _call(ws: websocket.WebSocket, method: str, params: dict[str, Any] | None = None) -> Any:
    request_id = next(_ids)
    ws.send(json.dumps({"id": request_id, "method": method, "params": params or {}}))
    while True:
        message = json.loads(ws.recv())
        if message.get("id") == request_id:
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            return message.get("result")


def look(url: str, until: str, timeout: float) -> dict[str, Any]:
    profile = Path(tempfile.mkdtemp(prefix="clawsvc-browser-"))
    browser = subprocess.Popen(["chromium", *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    started = time.monotonic()
    deadline = started + timeout
    try:
        port = _devtools_port(profile, browser, deadline)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            page = next(t for t in json.load(answer) if t.get("type") == "page")
        ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        try:
            _call(ws, "Page.enable")
            _call(ws, "Page.navigate", {"url": url})
            seen: dict[str, Any] = {"url": url, "text": ""}
            pause = threading.Event()
            while time.monotonic() < deadline:
                result = _call(ws, "Runtime.evaluate", {"expression": DEEP_TEXT, "returnByValue": True})
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    seen = json.loads(result["result"]["value"])
                if until in seen["text"]:
                    return {"found": True, **seen, "seconds": round(time.monotonic() - started, 1)}
                pause.wait(0.5)
            return {"found": False, **seen, "seconds": None}
        finally:
            ws.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        browser.wait(30)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="browser_page.py")
    parser.add_argument("url")
    parser.add_argument("--until", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    seen = look(args.url, args.until, args.timeout)
    print(json.dumps(seen))
    return 0 if seen["found"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
