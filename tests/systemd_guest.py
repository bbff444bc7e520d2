"""Boot a real systemd 252 as PID 1 in private namespaces and drive it from tests (see shared/systemd.md).

The guest sees the host's root through a throw-away overlay (nothing is written to the host), gets a private
/dev, a read-only sysfs, its own cgroup2 subtree /sys/fs/cgroup/unified/<name> as the root of its cgroup
namespace, and its own PID, UTS, IPC and network namespaces (only `lo`). Teardown halts it (SIGRTMIN+3), then
SIGKILLs what is left and removes the cgroup directories; the mounts die with the mount namespace.

    with booted_systemd(tmp_path, units={"demo.service": TEXT}, files={"/opt/x/run.py": CODE}) as guest:
        guest.systemctl("start", "demo.service", check=True)

Python for the guest: the running interpreter, its site-packages and this checkout are bind-mounted read-only
at /opt/clawsvc/{python,site-packages,src} (visible under ProtectHome=/PrivateTmp=, wherever CI put them);
/opt/clawsvc/bin/python runs that interpreter with them, and /usr/local/bin/clawsvc (the ExecStart= of the
shipped units) runs `python -m clawsvc` from the checkout.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from waiting import poll

T = TypeVar("T")

CGROUP2 = Path("/sys/fs/cgroup/unified")
REPO = Path(__file__).resolve().parent.parent
GUEST_OPT = Path("/opt/clawsvc")
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_ENV = {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "TERM": "dumb"}
GUEST_PYTHON = str(GUEST_OPT / "bin" / "python")
BOOT_TIMEOUT = 60.0
HALT_TIMEOUT = 60.0  # a halting guest stops its units first; clawsvc may take TimeoutStopSec (30 s)
# Units that start on the host's boot but only fail or make noise in a network-less guest.
ALWAYS_MASKED = ("console-getty.service", "getty@tty1.service", "systemd-timesyncd.service",
                 "systemd-networkd-wait-online.service", "NetworkManager-wait-online.service")
HOST_WANTS = ("multi-user.target.wants", "timers.target.wants", "getty.target.wants", "sysinit.target.wants")
_names = itertools.count(1)

# $1 scratch dir (tmpfs goes here), $2 cgroup name, $3 staged files, then triples of bind SRC DST ro|rw.
BOOT_SCRIPT = r"""
set -eu
B=$1 NAME=$2 STAGE=$3; shift 3
R=$B/root
mount --make-rprivate /
mount -t tmpfs -o size=2g,mode=700 tmpfs "$B"
mkdir -p "$B/upper" "$B/work" "$R"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$R"
mount -t tmpfs -o mode=755,nosuid tmpfs "$R/dev"
for n in null zero full random urandom tty; do touch "$R/dev/$n"; mount --bind "/dev/$n" "$R/dev/$n"; done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
touch "$B/console.log" "$R/dev/console"; mount --bind "$B/console.log" "$R/dev/console"
mount -t sysfs -o ro sysfs "$R/sys"
cp -a "$STAGE/." "$R/"
while [ $# -ge 3 ]; do
  mkdir -p "$R$2"; mount --bind "$1" "$R$2"; [ "$3" = rw ] || mount -o remount,bind,ro "$R$2"; shift 3
done
mkdir -p "/sys/fs/cgroup/unified/$NAME"
echo $$ > "/sys/fs/cgroup/unified/$NAME/cgroup.procs"
# systemd sets up LoadCredential*= in a private mount namespace and relies on / being shared (see systemd.md)
mount --make-rshared "$R"
exec unshare --pid --fork --uts --ipc --net --cgroup --root="$R" sh -c \
  'mount -t proc proc /proc && mount -t cgroup2 cgroup2 /sys/fs/cgroup &&
   exec env -i container=unshare /lib/systemd/systemd --system --unit=multi-user.target'
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_guest_support() -> None:
    """Skip (fail under CI=true) when this machine cannot boot a guest systemd."""
    problem = None
    if os.geteuid() != 0:
        problem = "booting systemd in namespaces needs root"
    elif not CGROUP2.is_dir():
        problem = f"{CGROUP2} (a writable cgroup2 hierarchy) is missing"
    elif not Path("/lib/systemd/systemd").exists() or not (shutil.which("unshare") and shutil.which("nsenter")):
        problem = "systemd, unshare or nsenter is not installed"
    if problem:
        if in_ci():
            pytest.fail(f"CI=true but no guest systemd: {problem}")
        pytest.skip(problem)


def _hidden_by_hardening(path: Path) -> bool:
    return any(path == Path(p) or Path(p) in path.parents for p in ("/root", "/home", "/run/user", "/tmp", "/var/tmp"))


def guest_path_for(host: Path, name: str) -> Path:
    """Where a host directory is bind-mounted in the guest: same path when a hardened unit can see it there."""
    return host if not _hidden_by_hardening(host) else GUEST_OPT / "mnt" / name


def base_python() -> Path:
    """The interpreter behind this venv (the guest sees it at the same path through the overlay)."""
    return Path(getattr(sys, "_base_executable", sys.executable)).resolve()


def _site_dirs() -> list[Path]:
    return [Path(site).resolve() for site in dict.fromkeys([sysconfig.get_paths()["purelib"],
                                                             sysconfig.get_paths()["platlib"]])]


def guest_pythonpath() -> list[str]:
    """Where the guest finds this checkout and its packages: visible to a hardened unit, wherever CI put them."""
    return [str(GUEST_OPT / "src"), *(str(GUEST_OPT / f"site-packages{index or ''}")
                                      for index in range(len(_site_dirs())))]


def python_runtime() -> tuple[dict[Path, Path], dict[str, str]]:
    """Binds and wrapper scripts that give the guest this interpreter, its packages and this checkout."""
    base = Path(sys.base_prefix).resolve()
    binds = {base: GUEST_OPT / "python", REPO: GUEST_OPT / "src"}
    for index, site in enumerate(_site_dirs()):
        binds[site] = GUEST_OPT / f"site-packages{index or ''}"
    paths = guest_pythonpath()
    python = GUEST_OPT / "python" / base_python().relative_to(base)
    wrapper = ("#!/bin/sh\n"
               f"export PYTHONPATH={':'.join(paths)}\n"
               f"export LD_LIBRARY_PATH={GUEST_OPT / 'python' / 'lib'}\n"
               "export PYTHONDONTWRITEBYTECODE=1\n"
               f'exec {python} "$@"\n')
    files = {GUEST_PYTHON: wrapper, "/usr/local/bin/clawsvc": f'#!/bin/sh\nexec {GUEST_PYTHON} -m clawsvc "$@"\n'}
    return binds, files


def _host_masks() -> list[str]:
    names = set(ALWAYS_MASKED)
    for wants in HOST_WANTS:
        with contextlib.suppress(OSError):
            names.update(p.name for p in (Path("/etc/systemd/system") / wants).iterdir())
    return sorted(names)


def _stage(stage: Path, units: Mapping[str, str], files: Mapping[str, str | bytes]) -> None:
    unit_dir = stage / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    for name in _host_masks():
        (unit_dir / name).symlink_to("/dev/null")
    for name, text in units.items():
        (unit_dir / name).write_text(text)
    for guest_path, content in files.items():
        target = stage / Path(guest_path).relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        target.write_bytes(data)
        target.chmod(0o755 if data.startswith(b"#!") else 0o644)


@dataclass
class Guest:
    """A booted guest systemd: `pid` is its PID 1 as the host sees it."""

    pid: int
    cgroup: str  # its subtree below /sys/fs/cgroup/unified
    binds: Mapping[Path, Path] = field(default_factory=dict)

    def enter(self, *argv: str, user: str | None = None) -> list[str]:
        """The host argv that runs `argv` inside the guest (all namespaces, its root and cwd), optionally as
        `user`; run it with GUEST_ENV."""
        prefix = ["runuser", "-u", user, "--"] if user else []
        return ["nsenter", "-t", str(self.pid), "-a", "-r", "-w", *prefix, *argv]

    def run(self, *argv: str, check: bool = False, timeout: float = 120.0, user: str | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the guest, optionally as `user`."""
        result = subprocess.run(self.enter(*argv, user=user), env=GUEST_ENV, input=input, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"guest: {' '.join(argv)} exited {result.returncode}\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def systemctl(self, *args: str, check: bool = False, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props), check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str, priority: str | None = None, output: str = "short") -> str:
        args = ["journalctl", "--no-pager", "-u", unit, "-o", output]
        if priority:
            args += ["-p", priority]
        return self.run(*args, check=True).stdout

    def path(self, guest_path: str | Path) -> Path:
        """The guest's file as the host can reach it (through /proc/PID/root)."""
        return Path(f"/proc/{self.pid}/root") / Path(guest_path).relative_to("/")

    def write(self, guest_path: str | Path, content: str, mode: int = 0o644) -> None:
        target = self.path(guest_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)

    def wait_for(self, what: str, predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.2) -> T:
        return poll(predicate, timeout, what, interval)


def _find_pid1(popen: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + BOOT_TIMEOUT
    pause = threading.Event()
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"guest boot script exited {popen.returncode}:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{popen.pid}/task/{popen.pid}/children").read_text().split():
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        pause.wait(0.05)
    raise RuntimeError(f"no guest systemd after {BOOT_TIMEOUT:g}s:\n{log.read_text(errors='replace')}")


def _wait_booted(guest: Guest) -> str:
    def settled() -> str | None:
        state = guest.systemctl("is-system-running", timeout=30).stdout.strip()
        return state if state in ("running", "degraded") else None
    state = guest.wait_for("the guest to finish booting", settled, timeout=BOOT_TIMEOUT)
    if state == "degraded":
        failed = guest.systemctl("--failed", "--plain", "--no-legend").stdout.strip()
        print(f"guest systemd is degraded; failed units:\n{failed}", file=sys.stderr)
    return state


def _remove_cgroup(name: str) -> None:
    """rmdir the guest's cgroup tree bottom-up once its processes are gone."""
    root = CGROUP2 / name
    deadline = time.monotonic() + 30.0
    pause = threading.Event()
    while root.exists():
        deepest_first = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for directory in [*deepest_first, root]:
            with contextlib.suppress(OSError):
                for pid in (directory / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                directory.rmdir()
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot remove cgroup {root}: {[str(p) for p in root.rglob('*') if p.is_dir()]}")
        pause.wait(0.05)


def _halt(popen: subprocess.Popen[bytes], pid1: int | None) -> None:
    if pid1 is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid1, signal.SIGRTMIN + 3)
        try:
            popen.wait(HALT_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(popen.pid, signal.SIGKILL)
    popen.wait(30)


@contextlib.contextmanager
def booted_systemd(tmp_path: Path, units: Mapping[str, str] | None = None,
                   files: Mapping[str, str | bytes] | None = None,
                   binds: Mapping[Path, Path] | None = None,
                   writable: Mapping[Path, Path] | None = None) -> Iterator[Guest]:
    """Boot a guest systemd with `units` in /etc/systemd/system, `files` at their guest paths, `binds`
    (host dir -> guest dir, read-only), `writable` (host dir -> guest dir, read-write: the guest's writes reach
    the host) plus this Python runtime; yield a Guest; always tear it down."""
    require_guest_support()
    runtime_binds, runtime_files = python_runtime()
    all_binds = {**runtime_binds, **(binds or {}), **(writable or {})}
    stage, scratch, log = tmp_path / "stage", tmp_path / "scratch", tmp_path / "boot.log"
    scratch.mkdir()
    _stage(stage, units or {}, {**runtime_files, **(files or {})})
    name = f"clawsvc-test-{os.getpid()}-{next(_names)}"
    argv = ["unshare", "--mount", "sh", "-c", BOOT_SCRIPT, "boot", str(scratch), name, str(stage)]
    for host, guest in all_binds.items():
        argv += [str(host), str(guest), "rw" if host in (writable or {}) else "ro"]
    with open(log, "wb") as out:
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    pid1 = None
    try:
        pid1 = _find_pid1(popen, log)
        guest = Guest(pid1, name, all_binds)
        _wait_booted(guest)
        yield guest
    finally:
        _halt(popen, pid1)
        _remove_cgroup(name)
