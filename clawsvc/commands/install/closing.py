"""What `install --system` ends with, so that the next step is obvious: `clawsvc` on PATH (a link in /usr/local/bin
to the clawsvc just installed, or a plain line saying where it is) and a last block on using the assistant (the
dashboard, where the token lives, a model and its key, a channel)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from clawsvc import trust
from clawsvc.config import ConfigError, load_config
from clawsvc.secrets import describe_token_source

ON_PATH = Path("/usr/local/bin/clawsvc")


def link_on_path(command: Sequence[str], out: TextIO, dry_run: bool = False, link: Path = ON_PATH) -> None:
    """Make `clawsvc` run the clawsvc the unit runs: a symlink at `link` when nothing is there (or our link is),
    never replacing anything else; otherwise say where it is."""
    if len(command) != 1:
        print(f"path     clawsvc is not a program here; run it as `{' '.join(command)}`", file=out)
        return
    target = Path(command[0])
    if target == link or (link.is_symlink() and os.path.realpath(link) == os.path.realpath(target)):
        print(f"path     {link} runs this clawsvc", file=out)
        return
    if os.path.lexists(link):
        print(f"path     {link} is another program: use this clawsvc as {target}, or replace that one by a link "
              f"to it (ln -sf {target} {link})", file=out)
        return
    if dry_run:
        print(f"path     would link {link} -> {target}", file=out)
        return
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    except OSError as exc:
        print(f"path     cannot link {link} -> {target} ({exc.strerror}); use clawsvc as {target}", file=out)
        return
    print(f"linked   {link} -> {target} (clawsvc is on PATH)", file=out)


def _token_source(config_path: Path) -> str:
    try:
        with trust.judged_as_the_service():
            return describe_token_source(load_config(config_path)).source
    except ConfigError as exc:
        return f"unknown ({exc})"


def closing_block(config_path: Path, instance: str | None, out: TextIO) -> None:
    """How to use the assistant now, in the words of the commands that do it."""
    i = f" -i {instance}" if instance else ""
    unit = f"clawsvc@{instance}" if instance else "clawsvc"
    lines = [
        "",
        "Use your assistant (README: \"Use your assistant\"; docs/assistant.md walks from here to a first chat):",
        f"  Control UI     clawsvc dashboard{i}        a one-time login link, and the ssh -L line for a laptop",
        f"  gateway token  {_token_source(config_path)}",
        "                 (never needed by hand: the dashboard link logs in; `clawsvc keys list` shows where it is)",
        f"  model and key  sudo clawsvc keys set anthropic{i} && sudo systemctl restart {unit}",
        f"                 sudo clawsvc openclaw{i} models set anthropic/claude-opus-5",
        f"  a channel      sudo clawsvc openclaw{i} channels add telegram   (WhatsApp: channels login --channel "
        "whatsapp, a QR code)",
        f"  openclaw CLI   sudo clawsvc openclaw{i} ARGS   (as the clawsvc user, with the service's environment)",
    ]
    print("\n".join(lines), file=out)
