"""The `triserve` command dispatches to subcommands and fails plainly on unknown ones."""

from __future__ import annotations

import pytest

from triserve import cli


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "bench", "agent", "operator", "crds"):
        assert name in out


def test_unknown_command_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
