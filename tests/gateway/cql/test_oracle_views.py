"""Materialized views: a view's rows are its base table's, so reading one needs read on both.

Cassandra authorises a SELECT from a view on its base table alone; Lockgate's policy names
objects, and a glob that grants a view (``ks.*_by_*``) must not hand out the rows of a base
table the principal may not read. The gateway learns each view's base from the cluster's
``system_schema.views`` and judges a view read as a read of the view and of its base. The
test node serves the base's rows under the view's name and logs the read of both, so the
oracle sees what was really read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lockgate.demo.standins.cqlserver.client import execute_frame, prepare_frame, query_frame

from .engine_stack import run_on_fake, stop_stack
from .test_oracle import Oracle

VIEWS_POLICY = """\
rules:
  - id: viewer-read
    effect: allow
    principals: ["airflow:prod/viewer*/*"]
    actions: [read]
    resources: [cass]
    objects: ["ks.orders", "ks.*_by_*"]
  - id: viewops-admin
    effect: allow
    principals: ["airflow:prod/viewops/*"]
    actions: [read, admin]
    resources: [cass]
    objects: ["ks.*"]
"""
GRANT = {("read", "ks.orders"), ("read", "ks.orders_by_item"), ("read", "ks.secrets_by_v")}
VIEWS = [
    "CREATE MATERIALIZED VIEW ks.secrets_by_v AS SELECT * FROM ks.secrets "
    "WHERE v IS NOT NULL AND id IS NOT NULL PRIMARY KEY (v, id)",
    "CREATE MATERIALIZED VIEW ks.orders_by_item AS SELECT * FROM ks.orders "
    "WHERE item IS NOT NULL AND id IS NOT NULL PRIMARY KEY (item, id)",
]
UNAUTHORIZED = 0x2100
SCHEMA_CHANGE = 5


@pytest.fixture
async def oracle(tmp_path: Path) -> AsyncIterator[Oracle]:
    o = await Oracle.start(tmp_path)
    try:
        run_on_fake(o.stack.fake, "INSERT INTO ks.secrets (id, v) VALUES (1, 'top secret')")
        for text in VIEWS:
            run_on_fake(o.stack.fake, text)
        (tmp_path / "policies" / "views.yaml").write_text(VIEWS_POLICY)
        assert o.stack.gw.policy.reload_if_changed(), o.stack.gw.policy.last_error
        yield o
    finally:
        await stop_stack(o.stack)


@pytest.mark.parametrize(
    "text", ["SELECT * FROM ks.secrets_by_v", "SELECT v FROM secrets_by_v WHERE v = 'top secret'"]
)
async def test_a_view_of_a_table_not_granted_is_not_read(oracle: Oracle, text: str) -> None:
    client = await oracle.connect("viewer_q")
    since = oracle.mark()
    answer = await client.request(query_frame(client.stream(), text))
    assert answer is not None and answer.error_code == UNAUTHORIZED, answer
    assert "ks.secrets" in answer.message
    # and not as a prepared statement either
    answer = await client.request(prepare_frame(client.stream(), text))
    assert answer is not None and answer.error_code == UNAUTHORIZED, answer
    assert oracle.executed(since) == []
    assert oracle.breaches(since, "viewer_q", GRANT) == []
    await client.close()


async def test_a_view_of_a_granted_table_is_read_and_audited_with_its_base(
    oracle: Oracle,
) -> None:
    client = await oracle.connect("viewer_ok")
    since = oracle.mark()
    text = "SELECT * FROM ks.orders_by_item"
    answer = await client.request(query_frame(client.stream(), text))
    assert answer is not None and not answer.is_error, answer
    prepared = await client.request(prepare_frame(client.stream(), text))
    assert prepared is not None and prepared.prepared_id is not None, prepared
    answer = await client.request(execute_frame(client.stream(), prepared.prepared_id))
    assert answer is not None and not answer.is_error, answer
    read_both = [("read", "ks.orders_by_item"), ("read", "ks.orders")]
    assert oracle.executed(since) == read_both * 2
    assert oracle.breaches(since, "viewer_ok", GRANT) == []
    await client.close()


async def test_a_view_created_through_the_gateway_is_known_to_the_next_login(
    oracle: Oracle,
) -> None:
    viewer = await oracle.connect("viewer_early")  # the catalog is loaded now
    ops = await oracle.connect("viewops")
    answer = await ops.request(
        query_frame(
            ops.stream(),
            "CREATE MATERIALIZED VIEW ks.secrets_by_id AS SELECT * FROM ks.secrets "
            "WHERE v IS NOT NULL AND id IS NOT NULL PRIMARY KEY (id, v)",
        )
    )
    assert answer is not None and answer.result_kind == SCHEMA_CHANGE, answer
    client = await oracle.connect("viewer_late")
    since = oracle.mark()
    answer = await client.request(query_frame(client.stream(), "SELECT * FROM ks.secrets_by_id"))
    assert answer is not None and answer.error_code == UNAUTHORIZED, answer
    # the connection that logged in before the view existed sees it too
    answer = await viewer.request(query_frame(viewer.stream(), "SELECT * FROM ks.secrets_by_id"))
    assert answer is not None and answer.error_code == UNAUTHORIZED, answer
    assert oracle.executed(since) == []
    for c in (viewer, ops, client):
        await c.close()
