"""Text for messages: cut, quoted and printable whatever another process put in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from waiting import poll

from clawsvc.gateway import ports
from clawsvc.service.notify import status_text
from clawsvc.text import cut, printable, shown


def test_printable_turns_every_control_run_into_one_space() -> None:
    assert printable("a\x1b[31mred\x1b[0m b") == "a [31mred [0m b"
    assert printable("line one\r\nline two\t\x00end") == "line one line two end"
    assert printable("\x9b31m csi") == "31m csi", "the 8-bit CSI (C1) is a control too"
    assert printable("  padded \x7f ") == "padded"
    assert printable("gateway 2026.9.6 — ok") == "gateway 2026.9.6 — ok"


def test_cut_and_shown_quote_a_bounded_part() -> None:
    assert cut("x" * 10, 4) == "xxxx…" and cut("short", 60) == "short"
    assert shown("y" * 100, 5) == repr("y" * 5) + "…"
    assert shown(10 ** 400).startswith("a number of about 40")


def test_status_lines_carry_no_control_characters() -> None:
    assert "\x1b" not in status_text("error: held by pid 9 (\x1b]0;pwned\x07)")


def test_a_process_name_with_escapes_is_named_printably(tmp_path: Path) -> None:
    code = "open('/proc/self/comm', 'w').write('\\x1b[2Jevil'); import time; time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", code]) as child:
        try:
            poll(lambda: (ports._comm(child.pid) or "").endswith("evil"), 10, "the child to rename itself")
            name = ports._comm(child.pid)
            assert name is not None and "\x1b" not in name and name.endswith("[2Jevil")
        finally:
            child.kill()
