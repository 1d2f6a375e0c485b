"""The control API's reference is complete and in step: every route of the control listener
is in the OpenAPI document and nothing else is, the rendered page is the committed one, and
the listener serves the document without authentication."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from lockgate.config import parse_config
from lockgate.control import ControlContext, control_app
from lockgate.control.openapi import PATH, document
from lockgate.control.openapi_markdown import render
from lockgate.server import Gateway

from ._stack import deployment, running_gateway

DOC_PAGE = Path(__file__).parents[2] / "docs" / "control-api.md"
POLICY = "rules: []\n"


class _Ready:
    ready = True

    def body(self) -> dict[str, Any]:
        return {}


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the control app binds (HEAD comes with each GET)."""
    cfg = parse_config({"deployments": [], "resources": []}, Path("lockgate.yaml"))
    ctx = ControlContext(cfg, *cast(Any, [None] * 7))
    app = control_app(ctx, _Ready)
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def documented_routes() -> set[tuple[str, str]]:
    return {(m, p) for p, item in document()["paths"].items() for m in item}


def test_every_route_of_the_control_listener_is_documented_and_nothing_else() -> None:
    served, documented = served_routes(), documented_routes()
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "documented routes the listener does not serve"


def test_every_operation_documents_its_responses_and_a_unique_id() -> None:
    ops = [op for item in document()["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in ops]
    assert len(ids) == len(set(ids))
    for op in ops:
        assert "200" in op["responses"], op["operationId"]
        for response in op["responses"].values():
            assert response["description"]


def test_every_reference_resolves() -> None:
    doc = document()
    text = repr(doc)
    for name in {part.split("'")[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in doc["components"]["schemas"], name


def test_the_document_is_valid_openapi_3_1() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(document())
    operations = [op.ok() for op in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) == len(documented_routes())


def test_the_committed_reference_page_is_the_rendered_document() -> None:
    assert DOC_PAGE.read_text() == render(document()), (
        "docs/control-api.md is stale: python -m lockgate.control.openapi_markdown "
        "> docs/control-api.md"
    )


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(
        tmp_path, policy=POLICY, deployments=[deployment("prod", "s3cret-Openapi")], resources=[]
    ) as gateway:
        yield gateway


async def test_the_listener_serves_the_document_unauthenticated(gw: Gateway) -> None:
    url = f"http://127.0.0.1:{gw.control_port}{PATH}"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == document()


def _media_with_examples(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path, item in doc["paths"].items():
        for op in item.values():
            bodies = [op.get("requestBody", {}), *op["responses"].values()]
            for body in bodies:
                for media_type, media in body.get("content", {}).items():
                    if "examples" in media:
                        found.append((f"{path} {media_type}", media))
    return found


def test_every_example_conforms_to_its_schema() -> None:
    import jsonschema_rs  # schemathesis's validator

    doc = document()
    media = _media_with_examples(doc)
    assert len(media) >= 10
    for where, content in media:
        validator = jsonschema_rs.Draft202012Validator(
            {**content["schema"], "components": doc["components"]}
        )
        for name, example in content["examples"].items():
            errors = [e.message for e in validator.iter_errors(example["value"])]
            assert not errors, (where, name, errors)
