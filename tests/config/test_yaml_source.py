"""The YAML reader shared by lockgate.yaml and policy files: errors name file, line and
column; a key given twice is refused unless the caller keeps the last; a field's line is
found again, or its nearest present parent's."""

from __future__ import annotations

import pytest

from lockgate.config.yaml_source import parse_yaml, yaml_lines
from lockgate.errors import ConfigError

TEXT = """\
listeners:
  http: {port: 1}
resources:
  - name: a
    routes:
      - path: /x
  - name: b
"""


def test_parses_one_document() -> None:
    assert parse_yaml("f.yaml", "a: [1, 2]\n") == {"a": [1, 2]}


def test_a_syntax_error_names_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml("f.yaml", "a: 1\nb: [2\n")
    msg = str(info.value)
    assert msg.startswith("f.yaml: line ") and "column" in msg and "not valid YAML" in msg


def test_a_key_given_twice_is_refused_unless_the_last_is_kept() -> None:
    text = "effect: allow\neffect: deny\n"
    with pytest.raises(ConfigError) as info:
        parse_yaml("f.yaml", text)
    assert "line 2" in str(info.value) and "duplicate key 'effect'" in str(info.value)
    assert parse_yaml("f.yaml", text, unique_keys=False) == {"effect": "deny"}


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("listeners", "http", "port"), 2),
        (("resources", 0, "routes", 0, "path"), 6),
        (("resources", 1), 7),
        (("resources", 1, "routes"), 7),  # absent: the nearest present parent
        (("resources", 5), 3),  # no such item: the list itself
        (("resources", -1), 3),  # never counted from the end
        (("nothing",), None),
        ((), None),
    ],
)
def test_the_line_of_a_field(path: tuple[str | int, ...], line: int | None) -> None:
    assert yaml_lines(TEXT)(path) == line


def test_no_line_in_text_that_does_not_parse() -> None:
    assert yaml_lines("a: [1\n")(("a",)) is None
