"""The `seqserve` command as a newcomer meets it: --version, help on every flag, whole names when piped."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import typer.main
from typer.testing import CliRunner

from seqserve.cli import app

runner = CliRunner()


def _options(command, path: list[str]):  # noqa: ANN001
    for name, sub in getattr(command, "commands", {}).items():
        yield from _options(sub, [*path, name])
    for param in command.params:
        yield " ".join(path), param


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"seqserve {version('seqserve')}"


def test_every_flag_and_argument_has_help_text() -> None:
    missing = [
        f"{where} {p.name}" for where, p in _options(typer.main.get_command(app), ["seqserve"]) if not p.help
    ]
    assert missing == []


def test_tables_keep_whole_names_when_piped(model_repository: Path) -> None:
    """CliRunner's stdout is not a terminal, like `seqserve models ... | less`: nothing may be cut to `…`."""
    result = runner.invoke(app, ["models", "--repository", str(model_repository)], env={"COLUMNS": ""})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert all(name in result.output for name in ("jv-bigru", "bms-gru", "many_to_many", "layers x hidden"))
