"""Parsing the ``lockgate`` command line: the global options are accepted before the command
and after it, for every verb, and the one after the command wins."""

from __future__ import annotations

import argparse

import pytest

from lockgate.cli import build_parser
from lockgate.cli_docs import iter_commands

COMMANDS = [words for words, _ in iter_commands(build_parser())]


def _required_arguments(words: tuple[str, ...]) -> list[str]:
    """A valid value for each positional argument and required option of ``words``."""
    parser = dict(iter_commands(build_parser()))[words]
    values: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        value = str(next(iter(action.choices))) if action.choices else "x"
        if not action.option_strings:
            values.append(value)
        elif action.required:  # a required option (policy suggest --dag D)
            values += [action.option_strings[-1], value]
    return values


def _parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_every_verb_is_listed() -> None:
    assert {" ".join(w) for w in COMMANDS} == {
        "init", "serve", "config check", "policy check", "policy lint", "policy test",
        "token revoke", "token unblock", "token revocations", "keys rotate", "keys list",
        "keys retire", "creds set", "creds rotate", "creds list", "audit tail", "audit search",
        "audit verify", "audit export", "db upgrade", "db check", "alerts test", "demo",
        "policy suggest", "policy unused", "console link",
    }  # fmt: skip


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w) for w in COMMANDS])
def test_config_before_and_after_the_command(words: tuple[str, ...]) -> None:
    rest = _required_arguments(words)
    assert _parse(*words, *rest).config is None
    for flag in ("-c", "--config"):
        assert _parse(flag, "before.yaml", *words, *rest).config == "before.yaml"
        assert _parse(*words, flag, "after.yaml", *rest).config == "after.yaml"
        assert _parse(*words, *rest, flag, "last.yaml").config == "last.yaml"
    # Given in both places, the one after the command wins.
    both = _parse("-c", "before.yaml", *words, "-c", "after.yaml", *rest)
    assert both.config == "after.yaml"
    expected_sub = words[1] if len(words) > 1 else None
    assert (both.command, getattr(both, "sub", None)) == (words[0], expected_sub)


@pytest.mark.parametrize("group", sorted({w[0] for w in COMMANDS if len(w) == 2}))
def test_config_between_a_group_and_its_command(group: str) -> None:
    words = next(w for w in COMMANDS if w[0] == group)
    rest = _required_arguments(words)
    assert _parse(group, "-c", "mid.yaml", words[1], *rest).config == "mid.yaml"
    assert _parse(group, "-c", "mid.yaml", words[1], "-c", "leaf.yaml", *rest).config == (
        "leaf.yaml"
    )


def test_the_verbs_own_options_still_parse_after_config() -> None:
    args = _parse("serve", "--config", "gw/lockgate.yaml", "--workers", "3")
    assert (args.config, args.workers) == ("gw/lockgate.yaml", 3)
    args = _parse("audit", "search", "-c", "x.yaml", "--dag", "d", "--decision", "deny")
    assert (args.config, args.dag, args.decision, args.limit) == ("x.yaml", "d", "deny", 100)
    args = _parse("policy", "check", "p", "read", "r/o", "-c", "x.yaml")
    assert (args.config, args.principal, args.action, args.target) == ("x.yaml", "p", "read", "r/o")


def test_config_needs_a_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parse("serve", "-c")
    assert info.value.code == 2
    assert "expected one argument" in capsys.readouterr().err


def test_every_argument_has_help() -> None:
    # docs/cli.md's reference is made from these texts: none may be missing.
    for words, parser in iter_commands(build_parser()):
        assert parser.description, words
        for action in parser._actions:
            assert action.help, (words, action.dest)
