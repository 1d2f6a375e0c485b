"""Password literals never reach an audit record: redaction with the server's scanner."""

from __future__ import annotations

import pytest

from lockgate.gateway.postgres.redact import redact


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("CREATE ROLE bob LOGIN PASSWORD 'hunter2'", "CREATE ROLE bob LOGIN PASSWORD '***'"),
        (
            "alter user bob with password 'a''b' valid until '2030-01-01'",
            "alter user bob with password '***' valid until '***'",
        ),
        ("CREATE USER x PASSWORD $pw$sec'ret$pw$", "CREATE USER x PASSWORD '***'"),
        ("CREATE USER x PASSWORD E'sec\\'ret'", "CREATE USER x PASSWORD '***'"),
        ("CREATE USER x PASSWORD U&'\\0073ecret'", "CREATE USER x PASSWORD '***'"),
        ("ALTER ROLE x PASSWORD 'p' /* 'hidden' */", "ALTER ROLE x PASSWORD '***'  "),
        ("CREATE ROLE x PASSWORD 'p' -- secret", "CREATE ROLE x PASSWORD '***'  "),
        ("CREATE GROUP g; ALTER GROUP g ADD USER u", "CREATE GROUP g; ALTER GROUP g ADD USER u"),
        (
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', pass 'x')",
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user '***', pass '***')",
        ),
        (
            "CREATE SUBSCRIPTION s CONNECTION 'host=h secret=x' PUBLICATION p",
            "CREATE SUBSCRIPTION s CONNECTION '***' PUBLICATION p",
        ),
        ("SELECT dblink_connect('password=x')", "SELECT dblink_connect('***')"),
        ("SELECT 'plain', \"user\" FROM t", "SELECT 'plain', \"user\" FROM t"),
        ("SELECT 1", "SELECT 1"),
    ],
)
def test_redaction(sql: str, expected: str) -> None:
    assert redact(sql) == expected


def test_a_quote_in_a_comment_or_dollar_body_does_not_shift_what_is_hidden() -> None:
    sql = "CREATE ROLE r /* it's */ PASSWORD $$x'y$$ VALID UNTIL 'infinity'"
    out = redact(sql)
    assert "x'y" not in out and "infinity" not in out and "it's" not in out
    assert out.startswith("CREATE ROLE r")


def test_an_unreadable_sensitive_text_is_withheld_whole() -> None:
    out = redact("CREATE ROLE r PASSWORD 'unterminated")
    assert "unterminated" not in out
    assert out.startswith("<statement withheld")
    assert redact("SELECT 'unterminated") == "SELECT 'unterminated"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT dblink_connect('postgresql://etl:hunter2@db/x')",
            "SELECT dblink_connect('***')",
        ),
        ("SELECT dblink('host=h pwd=x', 'select 1')", "SELECT dblink('***', '***')"),
        ("SELECT set_config('my.secret', 'v', false)", "SELECT set_config('***', '***', false)"),
    ],
)
def test_other_secret_carriers_are_redacted(sql: str, expected: str) -> None:
    assert redact(sql) == expected
