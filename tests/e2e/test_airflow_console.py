"""A real Airflow 3 DAG run, then what the console shows of it in Debian's Chromium.

Airflow runs ``finance_console`` (``tests/e2e/console_dags``) with the stock HttpOperator
through a real ``lockgate serve``: ``read_orders`` is allowed, ``overwrite_orders`` is
refused by policy (no rule lets a finance DAG write orders) and fails. Then a viewer signs
in through the test Entra ID and follows that run: its denied request in the audit
explorer (filtered by the DAG and the run id Airflow gave it), the run's timeline (every
task of it), the record, the access map of the resource and the check of the denied task's
own principal (no rule allows its write; the read is the finance rule's), and the
overview's chart of the DAG with its denial. Each step is a screenshot under
``test-artifacts/console/<test>/``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect

from tests._gateway_process import RESOURCE
from tests.console.browser import Shot, browser, page, shot
from tests.console.browser_gateway import READ_RULE, VIEWER, Console, console_site, sign_in

pytestmark = [pytest.mark.airflow, pytest.mark.slow]

# the browser fixtures and the console with its test Entra ID, shared with tests/console
__all__ = ["browser", "console_site", "page", "shot"]

DAGS = Path(__file__).with_name("console_dags")
DAG = "finance_console"
ALLOWED_TASK = "read_orders"
DENIED_TASK = "overwrite_orders"
BACKEND = "lockgate.airflow.secrets.LockgateSecretsBackend"


def airflow_env(console: Console, airflow_home: Path) -> dict[str, str]:
    """Airflow's settings for a worker of deployment ``prod`` of ``console``'s gateway:
    connections from the Lockgate secrets backend, proven by the deployment's secret."""
    made = console.gateway.scaffold
    backend = {
        "url": console.gateway.control_url,
        "deployment": "prod",
        "client_secret_file": str(made.config_path.parent / "deployment-prod.secret"),
    }
    return {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__WORKERS__SECRETS_BACKEND": BACKEND,
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps(backend),
        "PYTHONUNBUFFERED": "1",
    }


def run_dag(console: Console, airflow_home: Path) -> tuple[dict[str, Any], str]:
    """``DAG`` run once by a fresh Airflow process (``dag.test()``): its result (run id,
    state, each task's state) and Airflow's output."""
    proc = subprocess.run(
        [sys.executable, "-m", "lockgate.demo.airflow_runner", DAG],
        env=airflow_env(console, airflow_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    results = [
        json.loads(line.split(" ", 1)[1])
        for line in proc.stdout.splitlines()
        if line.startswith("LOCKGATE-RESULT ")
    ]
    assert proc.returncode == 0 and len(results) == 1, proc.stdout[-4000:]
    return results[0], proc.stdout


def state(text: str) -> str:
    return text.split(".")[-1].lower()


def browser_errors(page: Page) -> list[str]:
    """The page's console errors and uncaught errors from now on (a CSP violation is one)."""
    errors: list[str] = []

    def console_message(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            errors.append(f"{message.text} ({message.location.get('url', '')})")

    page.on("console", console_message)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    return errors


def test_a_denied_airflow_task_followed_through_the_console(
    console_site: Console, airflow_home: Path, page: Page, shot: Shot
) -> None:
    result, output = run_dag(console_site, airflow_home)
    tasks = {task: state(s) for task, s in result["tasks"].items()}
    assert tasks == {ALLOWED_TASK: "success", DENIED_TASK: "failed"}, output[-4000:]
    assert state(result["state"]) == "failed"
    principal = f"airflow:prod/{DAG}/{DENIED_TASK}"
    assert "403" in output and principal in output  # the task's log says who was refused
    run_id = result["run_id"]  # as Airflow named it: manual__<time with an offset>
    errors = browser_errors(page)
    try:
        follow_in_console(console_site, page, shot, run_id)
    except Exception:
        shot("failed")  # the page as it was
        raise
    assert not errors, "the browser reported errors:\n" + "\n".join(errors)


def follow_in_console(console_site: Console, page: Page, shot: Shot, run_id: str) -> None:
    """A viewer follows the run's denial from the audit explorer to the overview."""
    principal = f"airflow:prod/{DAG}/{DENIED_TASK}"
    main = page.locator("main")
    sign_in(page, console_site, VIEWER, shot)

    # -- the run's denied request in the audit explorer ----------------------------------
    sections = page.get_by_role("navigation", name="Sections")
    sections.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_label("DAG", exact=True).fill(DAG)
    page.get_by_label("Decision", exact=True).select_option("deny")
    run_field = page.get_by_label("Run", exact=True)
    run_field.fill(run_id)
    run_field.press("Enter")  # Enter in a filter submits the form
    expect(page).to_have_url(re.compile(r"[?&]run=manual__"))
    rows = page.locator("table.data tbody tr")
    expect(rows).to_have_count(1)
    denied = rows.first
    expect(denied).to_contain_text("deny")
    expect(denied).to_contain_text(principal)
    expect(denied).to_contain_text("write")
    expect(denied).to_contain_text("/orders")
    shot("audit-denied-of-the-run")

    # -- the run's timeline: every task of it --------------------------------------------
    denied.get_by_title(f"timeline of run {run_id}").click()
    expect(page).to_have_url(re.compile(r"/console/audit/run\?"))
    expect(page.get_by_role("heading", level=1)).to_contain_text(run_id)
    timeline = page.locator("svg").filter(has=page.locator("title#timeline-title"))
    for task in (ALLOWED_TASK, DENIED_TASK):
        expect(timeline.locator("text.lane-label", has_text=task)).to_have_count(1)
        expect(main.locator("table.data")).to_contain_text(f"airflow:prod/{DAG}/{task}")
    expect(main.locator("table.data")).to_contain_text("allow")
    shot("run-timeline")

    # -- the denied record ---------------------------------------------------------------
    main.locator("table.data tbody tr.denied").get_by_role("link").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Record")
    fields = page.get_by_role("table", name="Fields")
    expect(fields).to_contain_text(principal)
    expect(fields).to_contain_text(run_id)
    expect(fields).to_contain_text(RESOURCE)
    expect(page.locator(".badge.deny")).to_have_text("deny")
    shot("denied-record")

    # -- the access map of the resource: who may reach it, and why not this task ---------
    sections.get_by_role("link", name="Access map", exact=True).click()
    page.get_by_role("link", name=RESOURCE, exact=True).first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(RESOURCE)
    reach = main.locator("table.access-reach")
    expect(reach).to_contain_text(READ_RULE)
    expect(reach.locator("tr", has_text=READ_RULE)).to_contain_text("read")
    expect(reach.locator("tr", has_text=READ_RULE)).not_to_contain_text("write")
    shot("access-map")

    page.goto(console_site.url + "/access/check")
    page.get_by_label("Principal", exact=True).fill(principal)
    page.get_by_label("Resource", exact=True).select_option(RESOURCE)
    page.get_by_label("Action", exact=True).select_option("write")
    page.get_by_label("Object", exact=True).fill("/orders")
    page.get_by_role("button", name="Check").click()
    answer = main.locator("section.access-answer").first
    expect(answer.locator(".badge.deny")).to_be_visible()
    expect(answer).to_contain_text(re.compile("no rule", re.I))
    shot("check-denied-task")
    page.get_by_label("Action", exact=True).select_option("read")
    page.get_by_role("button", name="Check").click()
    expect(answer.locator(".badge.allow")).to_be_visible()
    expect(answer).to_contain_text(READ_RULE)  # what the same task may do: read
    shot("check-read")

    # -- the overview's chart of the DAG shows its denial --------------------------------
    sections.get_by_role("link", name="Overview", exact=True).click()
    expect(page.get_by_role("heading", level=1, name="Overview")).to_be_visible()
    chart = main.locator("figure.chart").filter(
        has=page.locator("figcaption", has_text=re.compile(f"^{DAG}$"))
    )
    expect(chart).to_have_count(1)
    expect(chart.locator("[role=img]")).to_have_attribute(
        "aria-label", re.compile(r"2 requests: 1 denied, 0 throttled, 0 upstream errors, 1 allowed")
    )
    expect(chart.locator("rect.seg-denied")).to_have_count(1)
    denied_dags = page.get_by_role("table", name=re.compile("^Denied requests per DAG"))
    expect(denied_dags.locator("tr", has_text=DAG)).to_contain_text("1")
    shot("overview")
