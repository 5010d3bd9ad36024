"""The `dsvl` dispatcher: every subcommand resolves to its module's arguments and entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

from transformers_dsvl.cli import SUBCOMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_each_subcommand_is_wired(command, capsys):
    parser = build_parser(command)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"dsvl {command}" in capsys.readouterr().out
    module_name, _, main_name, _, _ = SUBCOMMANDS[command]
    assert callable(getattr(__import__(module_name, fromlist=[main_name]), main_name))


def test_top_level_help_lists_commands_without_importing_them():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from transformers_dsvl.cli import main\n"
         "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
         "print(sorted(m for m in sys.modules if m.startswith(('trl', 'datasets', 'peft'))))"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for command in SUBCOMMANDS:
        assert command in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_unknown_command_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_info:
        build_parser(None).parse_args(["nope"])
    assert exit_info.value.code == 2
