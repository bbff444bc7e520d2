"""What the alert-hook tests receive with: a local HTTP server that records every POST (a webhook's far end), and a
command hook that appends each event JSON it gets on stdin to a file."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# appends stdin (one event JSON) as one line to the file named by argv[1]
RECORDER = "import sys; data = sys.stdin.read(); open(sys.argv[1], 'a').write(data.strip() + '\\n')"


def command_hook(record: Path) -> list[str]:
    return [sys.executable, "-c", RECORDER, str(record)]


def recorded(record: Path) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in record.read_text().splitlines()]
    except FileNotFoundError:
        return []


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with self.server.lock:
            self.server.posts.append((self.path, dict(self.headers), body))
        status, location = self.server.answer(self.path)
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class Receiver(ThreadingHTTPServer):
    """POSTs to http://127.0.0.1:PORT/...; `routes` maps a path to (status, Location) (default 204)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.routes: dict[str, tuple[int, str | None]] = {}
        self._thread = threading.Thread(target=self.serve_forever, name="clawsvc-test-webhook", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, path: str) -> tuple[int, str | None]:
        return self.routes.get(path, (204, None))

    def events(self, path: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for where, _, body in self.posts if path is None or where == path]

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)
