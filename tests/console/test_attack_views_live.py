"""The live page's actions under attack, continued (see test_attack_views.py): a run id
with glob characters revokes that run only, and each action's audit record names the human
who did it and the target exactly as typed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lockgate.audit import AuditRecord, HistogramBucket
from lockgate.console import charts, views_audit, views_live
from lockgate.errors import AuthenticationError
from lockgate.identity import TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.state import State
from tests.console._views import signed_in
from tests.console.test_attack_views import Console, Trail, context_of, serve, state, trail

__all__ = ["state", "trail"]  # the fixtures, imported

RESOURCE = "orders-api"


@pytest.fixture
async def operator(state: State, trail: Trail) -> AsyncIterator[Console]:
    user = signed_in("operator", "olivia")
    async for c in serve(context_of(state, trail), views_live.add_routes, user):
        yield c


def token(st: State, run: str, dag: str = "etl") -> str:
    issuer = TokenIssuer(st.keys, st.config.issuer_url)
    minted, _ = issuer.mint(TaskIdentity("prod", dag, "load", run, 1), RESOURCE, 900)
    return minted


@pytest.mark.parametrize("run", ["*", "manual__*", "run-[12]", "run-?", "%", "run-1 OR 1=1"])
async def test_a_run_id_with_glob_characters_revokes_that_run_only(
    state: State, trail: Trail, operator: Console, run: str
) -> None:
    named, other = token(state, run), token(state, "run-1")
    check = TokenVerifier(state.keys, state.revocations, state.config.issuer_url)
    form = {"act": "revoke_run", "deployment": "prod", "dag": "etl", "run": run,
            "reason": "incident <7>"}  # fmt: skip
    status, _, _ = await operator.post(form)
    assert status == 303
    with pytest.raises(AuthenticationError):
        check.verify(named, RESOURCE)
    assert check.verify(other, RESOURCE)  # "*" or "run-?" matched no other run
    [record] = trail.rows("token_revoked")
    assert (record.deployment, record.dag_id, record.run_id) == ("prod", "etl", run)
    assert record.principal == "console:olivia" and record.reason == "incident <7>"
    assert record.detail == {"by": "olivia@example.com", "role": "operator", "via": "oidc"}


async def test_a_record_page_shows_every_bidi_control_as_its_code_point(
    state: State, trail: Trail
) -> None:
    """The record page is where a record is read closely: an override in a field or in the
    detail JSON would show a reordered value there."""
    rlo = "etl\u202e\u2066txt.exe\u200f"
    trail.write(
        AuditRecord(event="denied", deployment="prod", dag_id=rlo, run_id=rlo, task_id=rlo,
                    resource=RESOURCE, action="read", object=f"/orders/{rlo}", decision="deny",
                    reason=rlo, detail={"note": rlo, rlo: 1})
    )  # fmt: skip
    async for console in serve(context_of(state, trail), views_audit.add_routes):
        status, page = await console.get("/console/audit/record/1")
        assert status == 200
        assert not set(page) & {"\u202e", "\u2066", "\u200f"}
        assert "etl&lt;U+202E&gt;&lt;U+2066&gt;txt.exe&lt;U+200F&gt;" in page
        detail = page.split('<pre class="detail"><code>')[1].split("</code>")[0]
        assert detail.count("\n") >= 3  # the JSON keeps its lines


def test_a_charts_label_shows_a_dag_ids_bidi_controls_its_links_keep_the_id() -> None:
    """A chart's caption, summary and bar tooltips say the DAG id in a sentence."""
    dag = "etl\u202egnp.exe"
    axis = charts.TimeAxis(0.0, 3600.0, 600.0)
    bucket = HistogramBucket(start=0.0, dag=dag, allowed=3, denied=1, throttled=0)
    _, per_dag = charts.series_of([bucket], axis)
    [series] = per_dag
    assert series.label == "etl<U+202E>gnp.exe" and series.dag == dag
    html = str(charts.stacked_bars(series, axis, ident="d1"))
    assert "\u202e" not in html and "etl&lt;U+202E&gt;gnp.exe" in html
    assert "dag=etl%E2%80%AEgnp.exe" in html  # the links filter on the id itself
