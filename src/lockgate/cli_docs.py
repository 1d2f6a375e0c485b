"""docs/cli.md's reference section, generated from the ``lockgate`` parser.

The page has two parts. Above :data:`MARKER` is prose written by hand (what the commands are
for, examples, exit codes); it is kept as it is. Below it is the reference: every verb, its
synopsis, and every argument with its help text, default and choices, rendered here from
:func:`lockgate.cli.build_parser`. A test regenerates the page and fails when it differs, so
a flag cannot be added, renamed or dropped without the page following. To rewrite it:

    python -m lockgate.cli_docs [docs/cli.md]

The rendering is our own (not argparse's help formatter), so it does not depend on the
terminal width or on the Python version's help layout.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from lockgate.cli import build_parser

MARKER = (
    "<!-- Generated from the parser by `python -m lockgate.cli_docs`: edit the help texts in "
    "src/lockgate/cli*.py, not the text below. -->"
)
# Options every command takes (before or after it); listed once, not under every verb.
GLOBAL_OPTIONS = frozenset({"--config"})

Command = tuple[tuple[str, ...], argparse.ArgumentParser]


def _subparsers(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def iter_commands(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[Command]:
    """Every runnable command (``("policy", "check")``, its parser), in declaration order."""
    sub = _subparsers(parser)
    if sub is None:
        yield words, parser
        return
    for name, child in sub.choices.items():
        yield from iter_commands(child, (*words, name))


def command_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments a command documents: not --help, not the global options."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and not GLOBAL_OPTIONS.intersection(a.option_strings)
    ]


def _value(action: argparse.Action) -> str:
    """How the value of an argument is written: ``PATH``, ``allow|deny|error``."""
    if action.choices is not None and action.metavar is None:
        return "|".join(str(c) for c in action.choices)
    if isinstance(action.metavar, str):
        return action.metavar
    return action.dest.upper() if action.option_strings else action.dest


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0


def argument_name(action: argparse.Action) -> str:
    """``-c/--config PATH``, ``--json``, ``FILE...``."""
    if not action.option_strings:
        return _value(action) + ("..." if action.nargs in ("+", "*") else "")
    flags = "/".join(action.option_strings)
    return f"{flags} {_value(action)}" if _takes_value(action) else flags


def synopsis(words: tuple[str, ...], parser: argparse.ArgumentParser) -> str:
    parts = ["lockgate", *words]
    for action in command_arguments(parser):
        if action.option_strings:
            flag = action.option_strings[-1]
            shown = f"{flag} {_value(action)}" if _takes_value(action) else flag
            parts.append(f"[{shown}]")
        else:
            parts.append(argument_name(action))
    return " ".join(parts)


def _meaning(action: argparse.Action) -> str:
    text = action.help or ""
    if action.choices is not None and action.metavar is not None:
        text += f" (one of: {', '.join(str(c) for c in action.choices)})"
    if _takes_value(action) and action.default not in (None, argparse.SUPPRESS):
        text += f" (default: {action.default})"
    return text.strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(actions: list[argparse.Action]) -> list[str]:
    rows = ["| argument | meaning |", "| --- | --- |"]
    rows += [f"| `{_cell(argument_name(a))}` | {_cell(_meaning(a))} |" for a in actions]
    return rows


def _description(parser: argparse.ArgumentParser) -> str:
    text = parser.description or ""
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def render_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """The generated part of docs/cli.md (after :data:`MARKER`)."""
    parser = parser or build_parser()
    top = [a for a in parser._actions if GLOBAL_OPTIONS.intersection(a.option_strings)]
    intro = (
        "Every command and its arguments. The global options below are accepted before the "
        "command and after it: `lockgate -c gw/lockgate.yaml serve` and `lockgate serve -c "
        "gw/lockgate.yaml` are the same (given in both places, the one after the command "
        "wins). Every command also takes `-h/--help`."
    )
    out = ["## Reference", "", textwrap.fill(intro, width=92), "", *_table(top)]
    for words, command in iter_commands(parser):
        arguments = command_arguments(command)
        out += ["", f"### `lockgate {' '.join(words)}`", "", _description(command), ""]
        out += ["```text", synopsis(words, command), "```"]
        if arguments:
            out += ["", *_table(arguments)]
    return "\n".join(out) + "\n"


def render_cli_doc(current: str, parser: argparse.ArgumentParser | None = None) -> str:
    """docs/cli.md as it should be: the hand-written part of ``current``, then the reference."""
    prose = current.split(MARKER, 1)[0].rstrip()
    return f"{prose}\n\n{MARKER}\n\n{render_reference(parser)}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "docs/cli.md")
    current = path.read_text(encoding="utf-8")
    wanted = render_cli_doc(current)
    if wanted != current:
        path.write_text(wanted, encoding="utf-8")
        print(f"{path}: reference regenerated")
    else:
        print(f"{path}: up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
