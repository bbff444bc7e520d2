"""A real Prometheus (Debian's `prometheus` package, installed by scripts/test.sh) for the tests: its own config and
data dir in a temp dir, a free loopback port, a short scrape interval; queried over its HTTP API; stopped at the end.

    with Prometheus(tmp_path, ["127.0.0.1:9464"]) as prom:
        prom.value('clawsvc_gateway_up')   # the instant value, or None when it has none yet
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from realgw import free_port
from waiting import poll, terminate

SCRAPE = "1s"


def prometheus_binary(name: str = "prometheus") -> str:
    """The binary (prometheus or promtool); skips where it is missing, fails in CI (scripts/test.sh installs it)."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {name} is not installed (Debian's prometheus; scripts/test.sh installs it)")
        pytest.skip(f"{name} is not installed (apt-get install prometheus)")
    return found


class Prometheus:
    def __init__(self, root: Path, targets: list[str]) -> None:
        self.root = root
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = {"global": {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE},
                  "scrape_configs": [{"job_name": "clawsvc", "static_configs": [{"targets": targets}]}]}
        (root / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log_path = root / "prometheus.log"
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        argv = [prometheus_binary(), f"--config.file={self.root / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h"]
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=self.root, start_new_session=True)
        poll(self._ready, 60, f"prometheus ready on port {self.port} ({self.log_tail()})", every=0.2)
        return self

    def _ready(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise AssertionError(f"prometheus exited {self.popen.returncode}: {self.log_tail()}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)
        return False

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no log)"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (HTTP API /api/v1/query)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            data = json.loads(answer.read())
        assert data["status"] == "success", data
        return list(data["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, None when the vector is empty."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.popen is not None:
            terminate(self.popen, 20)

    def __enter__(self) -> Prometheus:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
