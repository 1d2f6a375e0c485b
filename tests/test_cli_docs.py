"""docs/cli.md stays in step with the parser: its reference part is regenerated here and
must equal the file; the hand-written part above it is kept as it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.cli import build_parser
from lockgate.cli_docs import (
    MARKER,
    argument_name,
    command_arguments,
    iter_commands,
    render_cli_doc,
)

CLI_MD = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_docs_cli_md_is_generated_from_the_parser() -> None:
    current = CLI_MD.read_text(encoding="utf-8")
    assert current == render_cli_doc(current), (
        "docs/cli.md is out of step with the parser: run `python -m lockgate.cli_docs`"
    )


def test_every_verb_and_flag_is_in_the_reference() -> None:
    reference = CLI_MD.read_text(encoding="utf-8").split(MARKER, 1)[1]
    assert "| `-c/--config PATH` |" in reference
    for words, parser in iter_commands(build_parser()):
        section = reference.split(f"### `lockgate {' '.join(words)}`\n", 1)[1].split("\n### ")[0]
        for action in command_arguments(parser):
            name = argument_name(action).replace("|", "\\|")  # escaped in a Markdown table
            assert f"| `{name}` |" in section, (words, action.dest)
            assert action.help and action.help.split(";")[0].replace("|", "\\|") in section


def test_the_hand_written_part_is_kept_and_the_reference_replaced() -> None:
    page = render_cli_doc("# Title\n\nProse.\n\n" + MARKER + "\n\nan old reference\n")
    assert page.startswith("# Title\n\nProse.\n\n" + MARKER + "\n\n## Reference\n")
    assert "an old reference" not in page
    # A page without the marker is all prose: the reference is added after it.
    assert render_cli_doc("# Title\n").startswith("# Title\n\n" + MARKER + "\n\n## Reference\n")


def test_the_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    wide = render_cli_doc("")
    monkeypatch.setenv("COLUMNS", "40")
    assert render_cli_doc("") == wide
