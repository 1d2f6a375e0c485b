"""What each profile offers the control plane comes from one table, never a name compare."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

from lockgate.config import CqlResource, HttpResource
from lockgate.control import offers
from lockgate.control.offers import PLAIN, PROFILE_OFFERS, offer_of

CONTROL = Path(offers.__file__).parent


def http(profile: str | None = None, **extra: object) -> HttpResource:
    return HttpResource.model_validate(
        {"name": "r", "kind": "http", "upstream": "https://u.test", "profile": profile, **extra}
    )


def test_each_profile_offers_what_it_needs() -> None:
    assert offer_of(http("databricks")).poll_tokens
    assert offer_of(http("cosmos")).task_keys
    assert offer_of(http("arm", arm={"subscription_id": "s"})).identity_endpoint
    assert offer_of(http()) is PLAIN and offer_of(None) is PLAIN
    cql = CqlResource.model_validate(
        {"name": "c", "kind": "cql", "contact_points": ["h:9042"], "username": "u",
         "credential": "k"}
    )  # fmt: skip
    assert offer_of(cql) is PLAIN


def test_every_profile_the_config_accepts_has_a_row() -> None:
    literal = HttpResource.model_fields["profile"].annotation
    names = {a for arg in get_args(literal) for a in get_args(arg)}
    assert names and names == set(PROFILE_OFFERS)


def test_the_root_connection_of_a_databricks_resource_is_pat_mode() -> None:
    conn = offer_of(http("databricks")).root_connection("https", "gw", 8443)
    assert conn["conn_type"] == "databricks" and conn["login"] == ""
    assert conn["password"] == "{lockgate_token}" and conn["schema"] == "https"
    plain = PLAIN.root_connection("http", "gw", 80)
    assert plain["host"] == "http://gw:80"


def test_no_control_module_compares_a_profile_name() -> None:
    for path in CONTROL.glob("*.py"):
        if path.name == "offers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = [c.value for c in (node.left, *node.comparators)
                         if isinstance(c, ast.Constant)]  # fmt: skip
                assert not set(names) & set(PROFILE_OFFERS), f"{path.name}:{node.lineno}"
