"""``lockgate policy suggest | unused`` over a real audit trail, and the oracle: a gateway
on the suggested policy serves what the DAG did under a broad one, and nothing unseen."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lockgate._cli_state import add_global_options, add_group
from lockgate.audit import AuditLog, AuditRecord
from lockgate.cli_policy_usage import add_policy_usage_commands, parse_since
from lockgate.config import PostgresStateSettings, load_config
from lockgate.policy import load_policy_files, run_policy_tests
from lockgate.state import State

from ._gateway_process import (
    RESOURCE,
    BearerUpstream,
    get_status,
    scaffold,
    serve,
    stop,
    wait_serving,
)

BROAD = {
    "rules": [
        {"id": "everything", "effect": "allow", "principals": ["airflow:prod/*"],
         "actions": ["read"], "resources": ["*"]},
        {"id": "never-used", "effect": "allow", "principals": ["airflow:prod/finance/*"],
         "actions": ["write"], "resources": ["orders-*"]},
    ]
}  # fmt: skip


def run(*argv: str) -> int:
    """The commands as ``lockgate policy ...`` would run them."""
    parser = argparse.ArgumentParser(prog="lockgate")
    add_global_options(parser, top_level=True)
    add_policy_usage_commands(add_group(parser.add_subparsers(dest="cmd"), "policy", "policy"))
    args = parser.parse_args(argv)
    result: int = args.fn(args)
    return result


def write_records(db_path: Path, records: list[AuditRecord]) -> None:
    log = AuditLog(db_path)

    async def write_all() -> None:
        for record in records:
            await log.write(record)

    try:
        asyncio.run(write_all())
    finally:
        log.close()


def record(task: str, obj: str, event: str = "admitted", **kw: object) -> AuditRecord:
    fields: dict[str, object] = {
        "deployment": "prod", "dag_id": "finance", "task_id": task, "run_id": "r1",
        "principal": f"airflow:prod/finance/{task}", "resource": "orders-api",
        "action": "read", "object": obj, "decision": "allow", "rule": "everything",
    }  # fmt: skip
    fields.update(kw)
    return AuditRecord(event=event, **fields)  # type: ignore[arg-type]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "broad.yaml").write_text(yaml.safe_dump(BROAD))
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        yaml.safe_dump({"data_dir": str(tmp_path / "data"), "policies": ["policies/*.yaml"]})
    )
    (tmp_path / "data").mkdir()
    records = [record("load", f"/orders/{i}") for i in range(3)]
    records += [record("load", "/orders/1", "allowed", detail={"ref": "x", "status": 200})]
    records += [record("load", "/admin", "denied", decision="deny", rule=None)]
    records += [record("report", "/summary"), record("load", "/old", ts=1.0)]
    write_records(tmp_path / "data" / "audit.db", records)
    return path


def test_parse_since() -> None:
    assert parse_since("30d", now=100 * 86400.0) == 70 * 86400.0
    assert parse_since("12h", now=86400.0) == 43200.0
    assert parse_since("1700000000") == 1_700_000_000.0
    assert parse_since("2026-01-01T00:00:00+00:00") == 1_767_225_600.0
    with pytest.raises(ValueError, match="bad --since"):
        parse_since("yesterday")


def test_suggest_prints_a_policy_and_its_tests(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-c", str(config), "policy", "suggest", "--dag", "finance") == 0
    policy_text, tests_text = capsys.readouterr().out.split("\n---\n")
    assert "/old" not in policy_text  # older than the 30-day window
    rules = yaml.safe_load(policy_text)["rules"]
    assert [(r["principals"], r["objects"]) for r in rules] == [
        (["airflow:prod/finance/load"], ["/orders/*"]),
        (["airflow:prod/finance/report"], ["/summary"]),
    ]
    assert rules[0]["description"].endswith("allowed so far by everything")
    assert "'/admin': seen 1 time" in policy_text  # asked but denied, shown, not granted
    assert [t["expect"] for t in yaml.safe_load(tests_text)["tests"]].count("deny") == 1


def test_suggest_out_writes_files_the_policy_test_runner_passes(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suggested"
    args = ("-c", str(config), "policy", "suggest", "--dag", "finance", "--since", "1")
    assert run(*args, "--out", str(out)) == 0
    assert "2 rule(s) from 5 distinct uses (1 denied asks" in capsys.readouterr().out
    policy_set = load_policy_files([out / "suggested-finance.yaml"])
    results = run_policy_tests(policy_set, out / "suggested-finance.tests.yaml")
    assert len(results) == 6 and all(r.passed for r in results)


def test_unused_lists_never_used_rules_and_by_whom(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("-c", str(config), "policy", "unused", "--json") == 0
    report = {u["rule"]: u for u in json.loads(capsys.readouterr().out)}
    assert report["never-used"]["uses"] == 0
    assert report["never-used"]["unused_by"] == [
        "airflow:prod/finance/load",
        "airflow:prod/finance/report",
    ]
    assert report["everything"]["uses"] == 4
    assert run("-c", str(config), "policy", "unused", "--deployment", "dev") == 0
    assert capsys.readouterr().out.startswith("2 of 2 allow rule(s) never used")


def test_bad_since_is_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("-c", str(config), "policy", "unused", "--since", "soon") == 2
    assert "bad --since" in capsys.readouterr().err


def test_no_audit_trail_yet_suggests_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lockgate.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "none")}))
    assert run("-c", str(path), "policy", "suggest", "--dag", "finance") == 0
    assert "no rule to suggest" in capsys.readouterr().out


@pytest.mark.slow
def test_oracle_suggested_policy_serves_what_was_done_and_nothing_unseen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = BearerUpstream()
    gw = scaffold(tmp_path, upstream)
    try:
        files = gw.config.policy_files()
        files[0].write_text(yaml.safe_dump(BROAD))
        for other in files[1:]:
            other.write_text("rules: []\n")
        load, _ = gw.mint("finance", "run-1", task_id="load")
        report, _ = gw.mint("finance", "run-1", task_id="report")
        done = [(load, f"/orders/{n}") for n in (101, 102, 103)]
        done += [(load, "/health"), (report, "/summary/2026-12-04")]
        proc = serve(gw.config_path)
        try:
            wait_serving(proc, gw.url("/orders/101"), load)
            assert [get_status(gw.url(path), token) for token, path in done] == [200] * 5
        finally:
            assert stop(proc) == 0
        out = tmp_path / "suggested"
        assert run("-c", str(gw.config_path), "policy", "suggest", "--dag", "finance",
                   "--out", str(out)) == 0  # fmt: skip
        capsys.readouterr()
        files[0].write_text((out / "suggested-finance.yaml").read_text())
        for other in files[1:]:
            other.write_text("rules: []\n")
        policy_set = load_policy_files(files, {RESOURCE})
        tests = run_policy_tests(policy_set, out / "suggested-finance.tests.yaml")
        assert tests and all(t.passed for t in tests), [str(t) for t in tests]
        proc = serve(gw.config_path)
        try:
            wait_serving(proc, gw.url("/orders/101"), load)
            assert [get_status(gw.url(path), token) for token, path in done] == [200] * 5
            assert get_status(gw.url("/orders/999"), load) == 200  # inside /orders/*
            unseen = [(load, "/admin"), (load, "/orders/1/items"), (report, "/orders/101"),
                      (report, "/summary/2026-12-05")]  # fmt: skip
            assert [get_status(gw.url(path), token) for token, path in unseen] == [403] * 4
        finally:
            assert stop(proc) == 0
    finally:
        gw.state.close()
        upstream.stop()


def test_shared_state_reads_the_shared_trail_or_the_local_chain(
    tmp_path: Path,
    pg_state: Callable[..., PostgresStateSettings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    path = tmp_path / "lockgate.yaml"
    settings = pg_state(replica_id="gw-1")
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "state": {"postgresql": settings.model_dump(mode="json")},
            }
        )
    )
    st = State(load_config(path))
    try:
        log = st.audit_log()

        async def write_all() -> None:
            for n in (1, 2):
                await log.write(record("load", f"/orders/{n}"))

        try:
            asyncio.run(write_all())
        finally:
            log.close()
    finally:
        st.close()
    for local in ((), ("--local",)):
        capsys.readouterr()
        assert run("-c", str(path), "policy", "suggest", "--dag", "finance", *local) == 0
        rules = yaml.safe_load(capsys.readouterr().out.split("\n---\n")[0])["rules"]
        assert [r["objects"] for r in rules] == [["/orders/*"]], local
