"""The command line's help: every command in one group of the top-level help, every command's help ending with its
exit codes (what an admin scripting clawsvc needs to know)."""

from __future__ import annotations

import pytest

from clawsvc import cli


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_command_is_in_exactly_one_group() -> None:
    grouped = [name for _, names in cli.GROUPS for name in names]
    assert sorted(grouped) == sorted(cli.HANDLERS), "a command missing from, or twice in, cli.GROUPS"


def test_the_top_level_help_lists_the_commands_by_group(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    assert text.startswith("usage: clawsvc [-h] [--version] COMMAND ...")
    for title, names in cli.GROUPS:
        block = text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0]
        assert [line.split()[0] for line in block.splitlines()] == list(names)


@pytest.mark.parametrize("command", sorted(cli.HANDLERS))
def test_every_commands_help_ends_with_its_exit_codes(capsys: pytest.CaptureFixture[str], command: str) -> None:
    last = help_of(capsys, command).rstrip().split("\n\n")[-1]
    assert last.startswith("exit: 0 "), f"the help of {command} does not end with its exit codes: {last!r}"
