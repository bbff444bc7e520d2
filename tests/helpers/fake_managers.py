"""Stands in for systemctl, journalctl, loginctl and launchctl: DIR/bin/NAME runs `fake_managers.py DIR NAME ARGS`
(servicectl passes no custom environment, so DIR comes in argv). See install_fakes() below.

Every call appends its name and argv (tab-separated) to DIR/calls. The manager's state lives in small files in DIR:
  DIR/units/<unit>    "ActiveState UnitFileState" of a systemd unit (absent: not loaded)
  DIR/fail-start      present: `enable --now` / `restart` / `start` fail (exit 1, unit ends "failed")
  DIR/linger          what `loginctl show-user` prints after "Linger=" (default: no)
  DIR/agents/<label>  a loaded launchd agent; its text is its state (e.g. running, waiting)
  DIR/agent-start     the state a bootstrapped agent gets (default: running)
"""

import plistlib
import sys
from pathlib import Path

MANAGERS = ("systemctl", "journalctl", "loginctl", "launchctl")


def install_fakes(home: Path) -> Path:
    """The bin directory to put first on PATH."""
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True)
    for name in MANAGERS:
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} {home} {name} "$@"\n')
        fake.chmod(0o755)
    return bin_dir


def calls(home: Path) -> list[list[str]]:
    path = home / "calls"
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []



def read(path: Path, default: str) -> str:
    return path.read_text().strip() if path.exists() else default


def unit_state(unit: str) -> tuple[str, str]:
    active, enabled = read(HOME / "units" / unit, "inactive -").split()
    return active, enabled


def set_unit(unit: str, active: str, enabled: str) -> None:
    (HOME / "units").mkdir(exist_ok=True)
    (HOME / "units" / unit).write_text(f"{active} {enabled}\n")


def systemctl(args: list[str]) -> int:
    words = [a for a in args if a not in ("--user", "--no-pager", "--now")]
    verb, units = words[0], [w for w in words[1:] if not w.startswith("--")]
    now = "--now" in args
    if verb == "show":
        loaded = (HOME / "units" / units[0]).exists()
        active, enabled = unit_state(units[0])
        print(f"LoadState={'loaded' if loaded else 'not-found'}\nActiveState={active}\n"
              f"UnitFileState={'' if enabled == '-' else enabled}")
        return 0
    if verb in ("enable", "start", "restart"):
        unit = units[0]
        active, enabled = unit_state(unit)
        enabled = "enabled" if verb == "enable" else enabled
        if verb != "enable" or now:
            if (HOME / "fail-start").exists():
                set_unit(unit, "failed", enabled)
                print(f"Job for {unit} failed because the control process exited with error code.", file=sys.stderr)
                return 1
            active = "active"
        set_unit(unit, active, enabled)
        return 0
    if verb == "disable":
        active, _ = unit_state(units[0])
        set_unit(units[0], "inactive" if now else active, "disabled")
        return 0
    return 0  # daemon-reload and the rest


def journalctl(args: list[str]) -> int:
    unit = args[args.index("-u") + 1]
    print(f"Jan 01 00:00:00 host clawsvc[42]: gateway for {unit} exited 78")
    return 0


def loginctl(args: list[str]) -> int:
    print(f"Linger={read(HOME / 'linger', 'no')}")
    return 0


def launchctl(args: list[str]) -> int:
    agents = HOME / "agents"
    agents.mkdir(exist_ok=True)
    verb = args[0]
    if verb == "print":
        agent = agents / args[1].rsplit("/", 1)[1]
        if not agent.exists():
            print(f"Could not find service \"{agent.name}\" in domain", file=sys.stderr)
            return 113
        print(f"{args[1]} = {{\n\tactive count = 1\n\tstate = {agent.read_text().strip()}\n\tpid = 4242\n}}")
        return 0
    if verb == "bootstrap":
        label = plistlib.loads(Path(args[2]).read_bytes())["Label"]
        if (agents / label).exists():
            print("Bootstrap failed: 5: Input/output error", file=sys.stderr)
            return 5
        (agents / label).write_text(read(HOME / "agent-start", "running"))
        return 0
    if verb == "bootout":
        agent = agents / args[1].rsplit("/", 1)[1]
        if not agent.exists():
            print("Boot-out failed: 3: No such process", file=sys.stderr)
            return 3
        agent.unlink()
        return 0
    return 0


if __name__ == "__main__":
    HOME, NAME, ARGS = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    with (HOME / "calls").open("a") as log:
        log.write("\t".join([NAME, *ARGS]) + "\n")
    handlers = {"systemctl": systemctl, "journalctl": journalctl, "loginctl": loginctl, "launchctl": launchctl}
    sys.exit(handlers[NAME](ARGS))
