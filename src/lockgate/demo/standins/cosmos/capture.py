"""Capture what the installed ``azure-cosmos`` SDK really sends, one labelled step at a time.

The classifier tests replay these requests instead of hand-written headers, so a header the
SDK sends (or stops sending) is seen. Each request is stored with its method, raw path,
headers (minus the signature, dates, ids and other per-run values), body, and the operation
the fake account executed for it, which is the tests' expected answer.

Refresh the committed fixture after an SDK upgrade (the live test says when)::

    python -m lockgate.demo.standins.cosmos.capture \
        > tests/gateway/http/cosmos_captures/azure-cosmos.json

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

from .server import CosmosFake, running_cosmos

__all__ = ["VOLATILE", "capture", "capture_steps"]

# Headers whose value changes from run to run (or names a secret): left out of a capture.
VOLATILE = frozenset(
    {"authorization", "x-ms-date", "date", "user-agent", "host", "content-length",
     "accept-encoding", "connection", "x-ms-activity-id", "x-ms-client-id",
     "x-ms-cosmos-correlated-activityid", "x-ms-session-token",
     "x-ms-cosmos-intended-collection-rid", "if-none-match", "x-ms-continuation"}
)  # fmt: skip
DB, CONTAINER = "capdb", "orders"


def _steps() -> list[tuple[str, Callable[[Any], Any]]]:
    """(label, SDK call) in order; each call gets a dict with the client and handles."""
    from azure.cosmos import PartitionKey

    q_id = "SELECT * FROM r WHERE r.id=@id"

    def make_db(s: dict[str, Any]) -> None:
        s["db"] = s["client"].create_database(DB)

    def make_container(s: dict[str, Any]) -> None:
        s["c"] = s["db"].create_container(CONTAINER, partition_key=PartitionKey(path="/pk"))

    def batch(s: dict[str, Any]) -> None:
        ops = [("create", ({"id": "b1", "pk": "eu"},)), ("upsert", ({"id": "b2", "pk": "eu"},)),
               ("read", ("b1",)), ("delete", ("b2",))]  # fmt: skip
        s["c"].execute_item_batch(ops, partition_key="eu")

    return [
        ("create_database", make_db),
        ("read_database", lambda s: s["db"].read()),
        ("list_databases", lambda s: list(s["client"].list_databases())),
        (
            "query_databases",
            lambda s: list(
                s["client"].query_databases(q_id, parameters=[{"name": "@id", "value": DB}])
            ),
        ),
        ("create_container", make_container),
        ("read_container", lambda s: s["c"].read()),
        ("list_containers", lambda s: list(s["db"].list_containers())),
        (
            "query_containers",
            lambda s: list(
                s["db"].query_containers(q_id, parameters=[{"name": "@id", "value": CONTAINER}])
            ),
        ),
        ("create_item", lambda s: s["c"].create_item({"id": "o1", "pk": "eu", "qty": 1})),
        ("upsert_item_new", lambda s: s["c"].upsert_item({"id": "o2", "pk": "us", "qty": 2})),
        ("upsert_item_existing", lambda s: s["c"].upsert_item({"id": "o2", "pk": "us", "qty": 3})),
        ("replace_item", lambda s: s["c"].replace_item("o1", {"id": "o1", "pk": "eu", "qty": 4})),
        ("read_item", lambda s: s["c"].read_item("o1", partition_key="eu")),
        (
            "patch_item",
            lambda s: s["c"].patch_item(
                "o1",
                partition_key="eu",
                patch_operations=[{"op": "incr", "path": "/qty", "value": 1}],
            ),
        ),
        (
            "query_items_single_partition",
            lambda s: list(
                s["c"].query_items(
                    "SELECT * FROM c WHERE c.qty = @q",
                    parameters=[{"name": "@q", "value": 5}],
                    partition_key="eu",
                )
            ),
        ),
        (
            "query_items_cross_partition",
            lambda s: list(
                s["c"].query_items("SELECT * FROM c", enable_cross_partition_query=True)
            ),
        ),
        (
            "query_items_with_query_plan",
            lambda s: list(
                s["c"].query_items(
                    "SELECT * FROM c WHERE c.pk = 'eu'", enable_cross_partition_query=True
                )
            ),
        ),
        ("read_all_items", lambda s: list(s["c"].read_all_items())),
        ("batch", batch),
        ("delete_item", lambda s: s["c"].delete_item("o1", partition_key="eu")),
        ("delete_container", lambda s: s["db"].delete_container(CONTAINER)),
        ("delete_database", lambda s: s["client"].delete_database(DB)),
    ]


def capture_steps(fake: CosmosFake) -> list[dict[str, Any]]:
    """Run every step with the SDK against ``fake``; the requests each one sent."""
    from azure.cosmos import CosmosClient

    fake.requests.clear()
    state: dict[str, Any] = {"client": CosmosClient(fake.url, credential=fake.keys[0])}
    steps = [{"label": "connect", "requests": _records(fake)}]
    for label, call in _steps():
        fake.requests.clear()
        fake.plan_cross_partition = label == "query_items_with_query_plan"
        call(state)
        # The SDK refreshes account discovery in the background, whenever it likes.
        requests = [r for r in _records(fake) if r["path"] != "/"]
        steps.append({"label": label, "requests": requests})
    fake.plan_cross_partition = False
    return steps


def _records(fake: CosmosFake) -> list[dict[str, Any]]:
    return [
        {
            "method": r.method,
            "path": r.raw_path,
            "headers": {k: v for k, v in sorted(r.headers.items()) if k not in VOLATILE},
            "body": r.body.decode("utf-8"),
            "status": r.status,
            "executed": r.operation,
        }
        for r in fake.requests
    ]


def capture() -> dict[str, Any]:
    """A fresh account, the whole script, and the SDK version that produced it."""
    with running_cosmos() as fake:
        steps = capture_steps(fake)
    return {"sdk": f"azure-cosmos {version('azure-cosmos')}", "steps": steps}


if __name__ == "__main__":
    json.dump(capture(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
