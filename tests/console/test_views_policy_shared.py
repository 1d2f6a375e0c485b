"""The least-privilege pages with ``state: postgresql``: two replicas' records shipped to
the shared trail are read as one (the suggestion's downloads are what ``lockgate policy
suggest --out`` writes from the same trail), the DAG list and the shadow groups count both."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from lockgate.audit import AuditReader
from lockgate.cli import main
from lockgate.config import load_config
from lockgate.console.views_policy import add_routes
from lockgate.state import audit_shipping
from tests.audit.test_reader_iter_rows import _write
from tests.pgserver.fixtures import SharedStateFactory

from ._views import signed_in, views_app
from .test_views_policy import BROAD, RECORDS, SHADOW, context_of


async def test_pages_read_every_replicas_records(
    tmp_path: Path,
    pg_state: SharedStateFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    settings = pg_state(replica_id="gw-1")
    _write(tmp_path / "data" / "audit.db", RECORDS[:6], settings, "gw-1")
    _write(tmp_path / "gw-2" / "audit.db", RECORDS[6:], settings, "gw-2")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "broad.yaml").write_text(yaml.safe_dump(BROAD))
    (tmp_path / "policies" / "tight.yaml").write_text(yaml.safe_dump(SHADOW))
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "policies": ["policies/*.yaml"],
                "state": {"postgresql": settings.model_dump(mode="json")},
            }
        )
    )
    cfg = load_config(path)
    ctx = context_of(cfg)
    ctx.audit_reader = lambda: AuditReader(cfg.data_dir / "audit.db", shipping=audit_shipping(cfg))
    out = tmp_path / "out"
    assert main(["-c", str(path), "policy", "suggest", "--dag", "finance", "--out", str(out)]) == 0
    capsys.readouterr()
    app = views_app(ctx, add_routes, signed_in("viewer"))
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/console/policy/suggest?dag=finance")
        html = await resp.text()
        assert resp.status == 200 and "read 8 records" in html  # 6 of gw-1, 2 of gw-2
        resp = await client.get("/console/policy/suggest.yaml?dag=finance&since=30d")
        assert await resp.text() == (out / "suggested-finance.yaml").read_text()
        resp = await client.get("/console/policy/suggest-tests.yaml?dag=finance&since=30d")
        assert await resp.text() == (out / "suggested-finance.tests.yaml").read_text()
        html = await (await client.get("/console/policy")).text()
        assert "suggest rules for finance" in html and "suggest rules for ingest" in html
        html = await (await client.get("/console/policy/shadow")).text()
        assert "3 records where the shadow policy decides otherwise" in html
        html = await (await client.get("/console/policy/unused")).text()
        assert "1 of 2 allow rules never used" in html
