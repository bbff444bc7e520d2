"""clawsvc's own start: exec of `clawsvc run` → exec of the gateway, and SIGKILL of the gateway → the next exec.

Both ends are stamped by bench/stamp.c (compiled here) as its first act after exec, with CLOCK_MONOTONIC, so
no interpreter start is counted on either side: `stamp clawsvc run -c CFG` stamps and execs the venv's console
script (a fresh process with compiled bytecode, as systemd starts it), and the same binary, called `node`, is
the gateway.command: it answers `node --version` (through the real node with --gateway real) and otherwise
stamps and waits to be killed. It never listens, so clawsvc stays in "waiting for hello-ok" meanwhile.
The environment is a headless server's: no D-Bus, no PYTHON_KEYRING_BACKEND, no keyringrc (own HOME).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.common import Context, Row, Section, median, ms, percentile, realgw
from bench.service import spawned_pid
from tests.notify_peer import NotifyPeer
from tests.waiting import poll

START_TARGET = 0.250  # a regression guard: python's start, the imports, the config and its checks
RESPAWN_TARGET = 0.020
WAIT = 60.0  # bounds, not measurements: a loaded 2-core machine is slow
SOURCE = Path(__file__).with_name("stamp.c")


@dataclass(frozen=True)
class Stamp:
    role: str  # "exec" (clawsvc run) or "gateway"
    pid: int
    at: float  # CLOCK_MONOTONIC seconds


class Kit:
    """The compiled stamp binary, the fake gateway (`node` + an entry script with its package.json), and the
    console script; one per bench run."""

    def __init__(self, root: Path, real_node: str | None, env: dict[str, str] | None = None) -> None:
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise RuntimeError("own-start needs a C compiler (cc) to build bench/stamp.c")
        self.stamp = root / "stamp"
        subprocess.run([cc, "-O2", "-o", str(self.stamp), str(SOURCE)], check=True, timeout=120)
        self.node = root / "bin" / "node"
        self.node.parent.mkdir()
        os.link(self.stamp, self.node)
        self.entry = root / "openclaw" / "openclaw.mjs"
        self.entry.parent.mkdir()
        self.entry.write_text("// never run: the fake node stamps and waits\n")
        (self.entry.parent / "package.json").write_text(json.dumps({"engines": {"node": ">=22"}}))
        self.clawsvc = Path(sys.executable).with_name("clawsvc")
        if not self.clawsvc.exists():
            raise RuntimeError(f"{self.clawsvc} is missing: install clawsvc into this venv (pip install -e .)")
        self.real_node = real_node
        self.env = env or {}  # e.g. PYTHONPATH of another clawsvc tree, to compare two versions in one run
        self.home = root / "home"
        self.home.mkdir()


class Run:
    """One `clawsvc run` under the stamp binary, in its own directory; stop() leaves nothing behind."""

    def __init__(self, kit: Kit, token_file: bool, extra: dict[str, object] | None = None) -> None:
        self.kit = kit
        self.root = Path(tempfile.mkdtemp(prefix="clawsvc-ownstart-"))
        self.stamps = self.root / "stamps"
        config: dict[str, object] = {
            "gateway": {"command": [str(kit.node), str(kit.entry)], "port": realgw.free_port(),
                        "state_dir": str(self.root / "state"), "start_timeout": "600s", "stop_timeout": "5s"},
            "control": {"socket": str(self.root / "control.sock")},
            **(extra or {}),
        }
        if token_file:
            path = self.root / "token"
            path.write_text(os.urandom(24).hex() + "\n")
            path.chmod(0o600)
            config["auth"] = {"token_file": str(path)}
        self.config = self.root / "clawsvc.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.notify = NotifyPeer(self.root / "notify.sock")
        self.popen: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """What a system unit gives clawsvc (its CacheDirectory=), and nothing of a desktop session."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.kit.home), "LANG": "C.UTF-8",
               "NOTIFY_SOCKET": self.notify.address, "CLAWSVC_BENCH_STAMPS": str(self.stamps),
               "CACHE_DIRECTORY": str(self.root / "cache")}
        if self.kit.real_node:
            env["CLAWSVC_BENCH_REAL_NODE"] = self.kit.real_node
        return {**env, **self.kit.env}

    def start(self) -> None:
        argv = [str(self.kit.stamp), str(self.kit.clawsvc), "run", "-c", str(self.config)]
        with open(self.root / "clawsvc.log", "wb") as log:
            self.popen = subprocess.Popen(argv, env=self.env(), cwd=self.root, stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def read(self) -> list[Stamp]:
        try:
            lines = self.stamps.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [Stamp(role, int(pid), float(at)) for role, pid, at in (line.split() for line in lines)]

    def gateways(self, count: int) -> list[Stamp]:
        """The first `count` gateway stamps, waiting for them."""
        def enough() -> list[Stamp] | None:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"clawsvc exited with {self.popen.returncode}:\n{self.log_tail()}")
            found = [s for s in self.read() if s.role == "gateway"]
            return found[:count] if len(found) >= count else None
        return poll(enough, WAIT, f"gateway exec number {count}", every=0.005)

    def exec_stamp(self) -> Stamp:
        return next(s for s in self.read() if s.role == "exec")

    def log_tail(self) -> str:
        return "\n".join((self.root / "clawsvc.log").read_text(errors="replace").splitlines()[-15:])

    def halt(self) -> None:
        """SIGTERM clawsvc and wait; its gateway goes with it."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(WAIT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        for stamp in self.read():  # a gateway SIGKILLed with its clawsvc is gone; this is only a safety net
            if stamp.role == "gateway":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stamp.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again with the same config, cwd and environment, as `systemctl restart` does."""
        self.halt()
        self.stamps.unlink(missing_ok=True)
        self.notify.close()
        self.notify = NotifyPeer(self.root / "notify.sock")
        self.start()

    def stop(self) -> None:
        self.halt()
        self.notify.close()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(kit: Kit, token_file: bool, extra: dict[str, object] | None = None) -> Iterator[Run]:
    run = Run(kit, token_file, extra)
    try:
        run.start()
        yield run
    finally:
        run.stop()


def exec_to_gateway(kit: Kit, token_file: bool) -> tuple[float, float]:
    """(first start, restart) of one service: the restart finds its files warm (page cache, compile cache)."""
    with running(kit, token_file) as run:
        first = run.gateways(1)[0].at - run.exec_stamp().at
        run.restart()
        again = run.gateways(1)[0].at - run.exec_stamp().at
        return first, again


def respawns(kit: Kit, count: int) -> list[float]:
    """SIGKILL the gateway `count` times in one clawsvc run (every crash a first one: restart at once)."""
    times: list[float] = []
    with running(kit, token_file=False, extra={"reconnect": {"stable_after": 0}}) as run:
        for n in range(1, count + 1):
            victim = run.gateways(n)[-1]
            run.notify.wait_for(lambda d, pid=victim.pid: spawned_pid(d) == pid, WAIT)  # clawsvc knows its pid
            at = time.monotonic()
            os.kill(victim.pid, signal.SIGKILL)
            times.append(run.gateways(n + 1)[-1].at - at)
    return times


def run(ctx: Context) -> Section:
    n = ctx.reps(21, 3)
    real_node = ctx.backend().command[0] if ctx.gateway == "real" else None
    root = Path(tempfile.mkdtemp(prefix="clawsvc-ownstart-kit-"))
    try:
        kit = Kit(root, real_node)
        exec_to_gateway(kit, token_file=False)  # warm-up: page cache, bytecode compiled
        generated = [exec_to_gateway(kit, token_file=False) for _ in range(n)]
        from_file = [exec_to_gateway(kit, token_file=True) for _ in range(n)]
        respawn = respawns(kit, n)
        imports = [import_time(kit, IMPORTS) for _ in range(n)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report(n, generated, from_file, respawn, imports, real_node is not None)


IMPORTS = "clawsvc.cli, clawsvc.service.run"


def import_time(kit: Kit, modules: str) -> float:
    """Wall time of a fresh interpreter importing what `clawsvc run` has imported when it spawns the gateway,
    then exiting."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(kit.home), **kit.env}
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", f"import {modules}"], env=env, check=True, timeout=WAIT)
    return time.monotonic() - t0


def _spread(values: list[float]) -> str:
    return f"p90 {ms(percentile(values, 90))}, max {ms(max(values))}"


def report(n: int, generated: list[tuple[float, float]], from_file: list[tuple[float, float]],
           respawn: list[float], imports: list[float], real_node: bool) -> Section:
    section = Section("own-start", f"clawsvc's own start (exec → gateway exec, n={n} each)")
    restarts = [again for _, again in generated]
    firsts = [first for first, _ in generated]
    start = median(restarts)
    section.add(Row("exec → gateway exec, a restart (median)", ms(start), f"first start {ms(median(firsts))}",
                    f"{start / median(firsts):.2f}x", f"<= {ms(START_TARGET)}", start <= START_TARGET),
                why_missed=f"python's start and the imports before the spawn alone take {ms(median(imports))}.")
    section.add(Row("  a restart, spread", _spread(restarts)))
    section.add(Row("  first start of a config", ms(median(firsts)), _spread(firsts)))
    section.add(Row("  restart with auth.token_file", ms(median([again for _, again in from_file])),
                    _spread([again for _, again in from_file])))
    section.add(Row("  first start with auth.token_file", ms(median([first for first, _ in from_file])),
                    _spread([first for first, _ in from_file])))
    section.add(Row("  python start + imports before the spawn", ms(median(imports)), _spread(imports)))
    again = median(respawn)
    section.add(Row("SIGKILL → next gateway exec (median)", ms(again), _spread(respawn), "",
                    f"<= {ms(RESPAWN_TARGET)}", again <= RESPAWN_TARGET))
    section.notes.append(
        "Both ends are stamped (CLOCK_MONOTONIC) by bench/stamp.c right after exec: a wrapper that stamps and execs "
        "the venv's `clawsvc` console script, and the gateway.command `node ENTRY`, a fake node that stamps and "
        "waits. `node --version`, which clawsvc runs before each spawn, is answered by "
        + ("the real node." if real_node else "the fake itself (with --gateway real, by the real node).")
        + " Each sample is one service: its first start, then a restart with the same config, cwd and environment "
        "(CACHE_DIRECTORY, NOTIFY_SOCKET as a unit's); both read and check the config and load the secrets before "
        "the spawn. Default config: no auth.token_file, so the token is generated under the state dir after the "
        "keyring is considered; the environment is a headless server's (no D-Bus session, no "
        "PYTHON_KEYRING_BACKEND, no keyringrc). Respawn: one clawsvc run, reconnect.stable_after 0 (every kill a "
        "first crash), the kill sent once clawsvc has reported the gateway's pid.")
    return section
