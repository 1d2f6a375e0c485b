"""The console end to end in Debian's Chromium, in front of a real ``lockgate serve``.

People sign in through the test Entra ID (authorization code with PKCE): Olivia holds the
app role ``Lockgate.Operator``, Victor ``Lockgate.Viewer``. DAG runs mint their tokens from
the control plane as the Airflow secrets backend does and send requests through the HTTP
listener; ``lockgate init``'s policy lets ``finance_*`` DAGs read ``/orders`` and denies
them a write. Each step is a screenshot under ``test-artifacts/console/<test>/``; with
``LOCKGATE_DOCS_SCREENSHOTS=1`` the docs' pictures in ``docs/console/`` are made again.
"""

from __future__ import annotations

import csv
import json
import re
import secrets
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests._gateway_process import RESOURCE
from tests.console.browser import Shot, docs_shot
from tests.console.browser_gateway import OPERATOR, READ_RULE, VIEWER, Console, sign_in

DAG = "finance_daily"
OTHER_DAG = "finance_weekly"


@dataclass(frozen=True)
class Run:
    dag: str
    run: str
    task: str
    token: str
    jti: str


def dag_run(console_site: Console, task: str = "load_orders", dag: str = DAG) -> Run:
    """A DAG run's task: a token from the control plane, a read (allowed) and a write
    (denied) through the HTTP listener."""
    run_id = f"manual__{secrets.token_hex(4)}"
    token, jti = console_site.gateway.mint_task(dag, run_id, task)
    assert console_site.gateway.request(token, "/orders") == 200
    assert console_site.gateway.request(token, "/orders", method="POST") == 403
    return Run(dag, run_id, task, token, jti)


# -- a) sign in --------------------------------------------------------------------------
def test_sign_in_through_the_test_issuer(console_site: Console, page: Page, shot: Shot) -> None:
    # runs first, so the home page has something to show: two DAGs' reads and refused writes
    for _ in range(3):
        dag_run(console_site)
    weekly = dag_run(console_site, "extract", dag=OTHER_DAG)
    assert console_site.gateway.request(weekly.token, "/orders/o-1") == 200
    sign_in(page, console_site, OPERATOR, shot)
    expect(page).to_have_url(re.compile(r"/console/?$"))
    expect(page.get_by_role("heading", level=1)).to_have_count(1)
    expect(page.locator("main")).to_contain_text(OTHER_DAG)  # among the DAGs denied
    shot("home")
    docs_shot(page, "home")


# -- b) a denied request of a DAG run in the audit explorer ------------------------------
def test_find_the_denied_request_of_a_run(console_site: Console, page: Page, shot: Shot) -> None:
    run = dag_run(console_site)
    sign_in(page, console_site, VIEWER)
    page.goto(console_site.url + "/audit")
    shot("audit")
    page.get_by_label("DAG", exact=True).fill(run.dag)
    page.get_by_label("Decision", exact=True).select_option("deny")
    run_field = page.get_by_label("Run", exact=True)
    run_field.fill(run.run)
    run_field.press("Enter")  # Enter in a filter submits the form
    expect(page).to_have_url(re.compile(r"run=" + re.escape(run.run)))
    rows = page.locator("table.data tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("deny")
    expect(rows.first).to_contain_text("/orders")
    shot("audit-filtered")
    docs_shot(page, "audit")

    rows.first.get_by_role("link").first.click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.locator("main")).to_contain_text(run.run)
    expect(page.locator("main")).to_contain_text("deny")
    shot("record")

    page.get_by_role("link", name=re.compile("timeline", re.I)).first.click()
    expect(page.locator("main")).to_contain_text(run.run)
    expect(page.locator("main")).to_contain_text("allow")
    expect(page.locator("main")).to_contain_text("deny")
    shot("run-timeline")
    docs_shot(page, "run-timeline")


# -- c) the access map of a resource -----------------------------------------------------
def test_the_access_map_of_a_resource(console_site: Console, page: Page, shot: Shot) -> None:
    sign_in(page, console_site, VIEWER)
    page.goto(console_site.url + "/access")
    shot("access")
    page.get_by_role("link", name=RESOURCE).first.click()
    main = page.locator("main")
    expect(main).to_contain_text("finance_*")
    expect(main).to_contain_text(READ_RULE)
    shot("access-resource")
    docs_shot(page, "access-map")

    # the deciding rule for one request typed in (what `lockgate policy check` explains)
    page.goto(console_site.url + "/access/check")
    page.get_by_label("Principal", exact=True).fill(f"airflow:prod/{DAG}/load_orders")
    page.get_by_label("Resource", exact=True).select_option(RESOURCE)
    page.get_by_label("Action", exact=True).select_option("read")
    objects = page.get_by_label("Object", exact=True)
    objects.fill("/orders/o-7")
    objects.press("Enter")
    expect(main).to_contain_text(READ_RULE)
    shot("check-allowed")
    page.get_by_label("Action", exact=True).select_option("write")
    page.get_by_role("button", name="Check").click()
    expect(main).to_contain_text(re.compile("no rule", re.I))
    shot("check-denied")


# -- d) revoke a running task's token ----------------------------------------------------
def test_revoke_a_running_tasks_token(console_site: Console, page: Page, shot: Shot) -> None:
    run = dag_run(console_site, task="revoked_task")
    sign_in(page, console_site, OPERATOR)
    page.goto(console_site.url + "/live")
    row = page.locator("tr", has_text=run.jti)
    expect(row).to_have_count(1)
    expect(row).to_contain_text(run.run)
    shot("live")
    page.get_by_role("heading", name="Tokens live now").evaluate("el => el.scrollIntoView()")
    docs_shot(page, "live")
    row.get_by_role("link", name=f"Revoke token {run.jti}").click()
    expect(page.locator("main")).to_contain_text(run.jti)  # the confirmation names it
    page.get_by_label(re.compile("^Reason")).fill("stopping a runaway task")
    shot("confirm-revoke")
    page.get_by_role("button", name=re.compile("revoke", re.I)).click()
    expect(page.locator(".notice")).to_be_visible()
    expect(page.locator("tr", has_text=run.jti)).to_have_count(0)
    shot("revoked")
    deadline = time.monotonic() + 10
    while (status := console_site.gateway.request(run.token, "/orders")) == 200:
        assert time.monotonic() < deadline, "the revoked token still passes"
        time.sleep(0.2)
    assert status in (401, 403)


# -- e) a viewer: no buttons, and a forged POST is refused -------------------------------
def test_a_viewer_cannot_revoke(console_site: Console, page: Page, shot: Shot) -> None:
    run = dag_run(console_site, task="viewer_sees")
    sign_in(page, console_site, VIEWER)
    page.goto(console_site.url + "/live")
    expect(page.locator("main")).to_contain_text(run.jti)
    actions = re.compile(r"^(Revoke|Block|Unblock)", re.I)
    expect(page.get_by_role("link", name=actions)).to_have_count(0)
    expect(page.get_by_role("button", name=actions)).to_have_count(0)
    shot("live-viewer")
    # the viewer's own session CSRF token (the sign-out form carries it)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf
    origin = console_site.gateway.control_url
    forged = {"act": "revoke_token", "jti": run.jti, "reason": "forged"}
    for headers, token in (
        ({"Origin": origin}, csrf),  # the right token, but a viewer: refused by role
        ({"Origin": origin}, "forged"),  # a wrong token
        ({"Origin": "https://evil.example"}, csrf),  # another site
        ({}, csrf),  # no Origin nor Referer
    ):
        answer = page.request.post(
            console_site.url + "/live/act",
            form={**forged, "csrf": token},
            headers=headers,
            max_redirects=0,
        )
        assert answer.status == 403, (headers, token == csrf, answer.status)
    assert console_site.gateway.request(run.token, "/orders") == 200


# -- least privilege from use: the smallest rules a DAG's run needed ---------------------
def test_suggest_the_smallest_rules_of_a_dag(console_site: Console, page: Page, shot: Shot) -> None:
    dag_run(console_site, task="suggested")
    sign_in(page, console_site, VIEWER)
    page.goto(console_site.url + "/policy")
    shot("least-privilege")
    dag_field = page.get_by_label("DAG", exact=True)
    if dag_field.evaluate("el => el.tagName") == "SELECT":  # the DAGs seen in the trail
        dag_field.select_option(DAG)
    else:
        dag_field.fill(DAG)
    page.get_by_label("Since", exact=True).press("Enter")
    expect(page).to_have_url(re.compile(r"/policy/suggest\?.*dag=" + DAG))
    main = page.locator("main")
    expect(main).to_contain_text("/orders")
    expect(main).to_contain_text("read")
    shot("suggest")
    docs_shot(page, "suggest")


# -- a run's records exported, and the chain verified by an operator ---------------------
def test_export_a_run_and_verify_the_chain(console_site: Console, page: Page, shot: Shot) -> None:
    run = dag_run(console_site, task="exported")
    sign_in(page, console_site, OPERATOR)
    page.goto(f"{console_site.url}/audit?dag={run.dag}&run={run.run}")
    with page.expect_download() as csv_download:
        page.get_by_role("link", name="Export CSV").click()
    lines = Path(csv_download.value.path()).read_text().splitlines()
    header, rows = lines[0].split(","), list(csv.DictReader(lines))
    assert "run_id" in header and {r["run_id"] for r in rows} == {run.run}
    assert {r["decision"] for r in rows} >= {"allow", "deny"}
    with page.expect_download() as json_download:
        page.get_by_role("link", name="Export JSON lines").click()
    exported = Path(json_download.value.path()).read_text()
    records = [json.loads(line) for line in exported.splitlines()]
    assert len(records) == len(rows) and {r["run_id"] for r in records} == {run.run}
    assert run.token not in exported  # ids only, never the token

    page.get_by_role("link", name="Chain").first.click()
    page.get_by_role("button", name="Verify the chain now").click()
    badge = page.locator(".chain-status .badge")
    deadline = time.monotonic() + 20
    while "intact" not in badge.inner_text():
        assert "BROKEN" not in badge.inner_text()
        assert time.monotonic() < deadline, "the chain's verification did not finish"
        time.sleep(0.5)
        page.reload()
    shot("chain-verified")


# -- the kill switch: an operator blocks a DAG, then lifts the block ---------------------
def test_block_a_dag_then_unblock_it(console_site: Console, page: Page, shot: Shot) -> None:
    blocked_dag = "finance_blocked"
    run = dag_run(console_site, task="blocked", dag=blocked_dag)
    sign_in(page, console_site, OPERATOR)
    page.goto(console_site.url + "/live")
    page.get_by_label("DAG to block", exact=True).fill(blocked_dag)
    page.get_by_role("button", name="Block DAG…").click()
    page.get_by_label(re.compile("^Reason")).fill("a bad deploy, stop it")
    shot("confirm-block")
    page.get_by_role("button", name="Block DAG", exact=True).click()
    expect(page.locator(".notice")).to_contain_text(f"DAG {blocked_dag}")
    blocks = page.get_by_role("table", name=re.compile("^Blocks in force"))
    expect(blocks).to_contain_text(blocked_dag)
    expect(blocks).to_contain_text("a bad deploy, stop it")
    shot("blocked")
    gateway = console_site.gateway
    deadline = time.monotonic() + 10
    while gateway.request(run.token, "/orders") == 200:  # its tokens are refused...
        assert time.monotonic() < deadline, "a blocked DAG's token still passes"
        time.sleep(0.2)
    with pytest.raises(urllib.error.HTTPError):  # ...and it gets no new one
        gateway.mint_task(blocked_dag, "manual__after_block", "blocked")

    blocks.get_by_role("link", name=f"Unblock DAG {blocked_dag}").click()
    page.get_by_role("button", name="Unblock DAG", exact=True).click()
    expect(page.locator(".notice")).to_contain_text("unblocked")
    shot("unblocked")
    # the block revoked the DAG's tokens issued up to its second, that second included
    # (iat has one-second resolution; the safe side): a retry after it gets a working token
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.05)
    token, _ = gateway.mint_task(blocked_dag, "manual__after_unblock", "blocked")
    assert gateway.request(token, "/orders") == 200
