"""Mistakes in lockgate.yaml that have a likely fix: a misspelt key names its line and the
closest valid key of that very section; a wrong choice lists the allowed values and the
closest of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lockgate.config import parse_config
from lockgate.errors import ConfigError
from tests.config._files import error_of, valid

CONFIG = """\
listeners:
  http: {port: 8471}
deployments:
  - name: prod
    proof: {type: client_secret, secret_sha256: "%s"}
    dags: ["*"]
resources:
  - name: orders-api
    kind: http
    upstream: https://orders.example
    conn_idd: orders_api
    routes:
      - {path: /orders, actoin: read}
  - name: pg
    kind: postgres
    host: db.example
    port: 5432
    database: app
    username: gw
    tls: verify_full
"""


def _lines(msg: str) -> list[str]:
    return [line.strip() for line in msg.splitlines()[1:]]


def test_a_misspelt_key_names_its_line_and_the_closest_key(tmp_path: Path) -> None:
    path, msg = error_of(tmp_path, CONFIG % ("0" * 64))
    lines = _lines(msg)
    assert f"{path}:11: resources[0].conn_idd: unknown field; did you mean 'conn_id'?" in lines
    assert f"{path}:13: resources[0].routes[0].actoin: unknown field; did you mean 'action'?" in (
        lines
    )


def test_a_wrong_choice_lists_the_allowed_values_and_the_closest(tmp_path: Path) -> None:
    path, msg = error_of(tmp_path, CONFIG % ("0" * 64))
    assert (
        f"{path}:20: resources[1].tls: Input should be 'disable', 'require' or 'verify-full' "
        "(got 'verify_full'); did you mean 'verify-full'?"
    ) in _lines(msg)


@pytest.mark.parametrize(
    ("where", "key", "suggestion"),
    [
        ((), "resorces", "resources"),
        (("listeners", "http"), "prot", "port"),
        (("tokens",), "max_tll", "max_ttl"),
        (("audit",), "durabilty", "durability"),
        (("deployments", 0, "proof"), "secret_sha", "secret_sha256"),
        (("credentials", 1), "client_idd", "client_id"),
        (("resources", 0), "upstreem", "upstream"),
    ],
)
def test_suggestions_come_from_the_section_of_the_key(
    tmp_path: Path, where: tuple[str | int, ...], key: str, suggestion: str
) -> None:
    data = valid()
    section: Any = data
    for part in where:
        section = section[part]
    section[key] = 1
    _, msg = error_of(tmp_path, data)
    assert f"{key}: unknown field; did you mean '{suggestion}'?" in msg


def test_a_key_like_nothing_lists_the_keys_of_its_section(tmp_path: Path) -> None:
    data = valid()
    data["credentials"][0]["zzzz"] = 1
    _, msg = error_of(tmp_path, data)
    assert "credentials[0].zzzz: unknown field (valid here: name, type, overlap)" in msg


def test_the_value_of_an_unknown_key_is_never_echoed(tmp_path: Path) -> None:
    # A misspelt secret field ("pasword") must not print the secret that follows it.
    data = valid()
    data["credentials"][0]["pasword"] = "hunter2-the-real-secret"
    _, msg = error_of(tmp_path, data)
    assert "credentials[0].pasword: unknown field" in msg
    assert "hunter2" not in msg


def test_a_postgres_resource_path_has_no_union_tag(tmp_path: Path) -> None:
    data = valid()
    data["resources"].append(
        {
            "name": "pg",
            "kind": "postgres",
            "host": "h",
            "database": "d",
            "username": "u",
            "serch_path": ["public"],
        }
    )
    _, msg = error_of(tmp_path, data)
    assert "resources[2].serch_path: unknown field; did you mean 'search_path'?" in msg
    assert ".postgres." not in msg


def test_a_misspelt_kind_suggests_the_closest(tmp_path: Path) -> None:
    data = valid()
    data["resources"][1]["kind"] = "htp"
    _, msg = error_of(tmp_path, data)
    assert (
        "resources[1].kind: unknown kind 'htp'; expected one of 'http', 'cql', 'postgres'; "
        "did you mean 'http'?"
    ) in msg
    data["resources"][1]["kind"] = "http"
    data["credentials"][0]["type"] = "statik"
    _, msg = error_of(tmp_path, data)
    assert "credentials[0].type: unknown type 'statik'" in msg and "did you mean 'static'?" in msg


def test_parsed_data_gets_the_same_hints_without_lines() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"log_level": "warn", "listners": {}})
    lines = _lines(str(info.value))
    assert "listners: unknown field; did you mean 'listeners'?" in lines
    assert (
        "log_level: Input should be 'debug', 'info', 'warning' or 'error' (got 'warn'); "
        "did you mean 'warning'?"
    ) in lines
