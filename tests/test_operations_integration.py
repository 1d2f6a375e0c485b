"""Issue 14's operations parts together, as an operator runs them, with real processes:

- ``serve --workers 2`` on SQLite state with a quota, denial alerts to a signed webhook,
  tracing to a local OTLP/HTTP collector, the OCSF mirror and a credential held in Vault,
  through a kill -9 of each worker and a SIGHUP: ``/metrics`` counts what the audit trail
  records (served, throttled, denied); one alert per DAG; the spans of the requests served
  after the restarts reach the collector; the OCSF mirror verifies against the whole chain;
- two replicas on shared PostgreSQL: one quota, each denial alerted once across a stopped or
  killed (kill -9) holder of the alert lease;
- a gateway killed with its writer: its concurrency slot comes back, its OCSF mirror has no
  gap; reloads that take a quota out and back, refuse new tracing/alerts settings, keep the
  running quota over a broken one;
- ``config check`` refuses what ``serve`` refuses or cannot run (tracing headers, mirrors).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lockgate.audit import AuditReader
from lockgate.audit.ocsf import verify_export
from lockgate.config import PostgresStateSettings, load_config
from lockgate.demo.stack import free_port
from lockgate.demo.standins.vault import FakeVault
from lockgate.errors import ConfigError
from lockgate.identity import TaskIdentity, TokenIssuer
from lockgate.state import State
from tests._gateway_process import (
    CREDENTIAL,
    RESOURCE,
    BearerUpstream,
    Scaffold,
    get_status,
    scaffold,
    serve,
    stop,
    wait_serving,
)
from tests._operations import (
    DENIED_DAG,
    THROTTLED_DAG,
    OtlpCollector,
    SlowUpstream,
    config_check,
    delivered,
    denial_counts,
    held_in_vault,
    kill_worker,
    operations_config,
    total,
    until,
    workers_of,
)
from tests.fakes.alert_receivers import WebhookReceiver, serving_in_thread
from tests.test_workers import _scrape

pytestmark = pytest.mark.slow


def test_workers_quota_alerts_tracing_and_ocsf_through_kills_and_reload(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    with held_in_vault(gw.config_path, bearer_upstream.secret, tmp_path) as vault:
        serve_everything_at_once(gw, tmp_path, vault, bearer_upstream.secret)


def serve_everything_at_once(gw: Scaffold, tmp_path: Path, vault: FakeVault, secret: str) -> None:
    hmac_key = secrets.token_hex(32).encode()  # the key file's text is the key
    webhook = WebhookReceiver(hmac_key)
    collector = OtlpCollector()
    ocsf = tmp_path / "audit.ocsf.jsonl"
    with serving_in_thread(webhook):
        operations_config(gw.config_path, tmp_path / "secrets", webhook, hmac_key)
        data = yaml.safe_load(gw.config_path.read_text())
        data["audit"] = {**(data.get("audit") or {}), "ocsf": str(ocsf)}
        data["tracing"] = {"enabled": True, "otlp_endpoint": f"http://127.0.0.1:{collector.port}"}
        gw.config_path.write_text(yaml.safe_dump(data))
        check = config_check(gw.config_path)
        assert check.returncode == 0, check.stdout + check.stderr

        warmup, _ = gw.mint("finance_daily", "warmup")
        url = gw.url()
        proc = serve(gw.config_path, "--workers", "2")
        statuses: dict[str, list[int]] = {}

        def burst(dag: str, run: str, n: int) -> None:
            token, _ = gw.mint(dag, run)
            statuses.setdefault(dag, []).extend(get_status(url, token) for _ in range(n))

        try:
            wait_serving(proc, url, warmup)
            until(lambda: len(workers_of(proc)) == 2, 15, "two workers")
            time.sleep(0.5)  # both in the port group
            burst(THROTTLED_DAG, "before", 20)
            burst(DENIED_DAG, "before", 5)
            assert set(statuses[THROTTLED_DAG]) == {200, 429}, statuses
            assert set(statuses[DENIED_DAG]) == {403}, statuses
            time.sleep(0.5)  # records handed to the writer before a worker dies
            delivered(webhook, 1)
            for pid in workers_of(proc):  # each worker in turn, the alerting one included
                kill_worker(proc, pid)
                time.sleep(0.5)
            proc.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            until(lambda: get_status(url, warmup) == 200, 15, "serving after the reload")
            time.sleep(2.0)  # the bucket refills: the next burst starts as the first did
            burst(THROTTLED_DAG, "after", 20)
            assert set(statuses[THROTTLED_DAG][20:]) == {200, 429}, statuses
            time.sleep(3.0)  # past the denial window: a re-alert would have been sent by now
            # /metrics: the dead workers' counts kept; the same numbers as the clients saw
            until(lambda: bool(_scrape(gw.control_port)), 10, "metrics served")
            samples = _scrape(gw.control_port)
            throttled_seen = statuses[THROTTLED_DAG].count(429)
            served_seen = statuses[THROTTLED_DAG].count(200)
            assert total(samples, "lockgate_quota_throttled_total") == throttled_seen
            assert (
                total(samples, "lockgate_requests_total", dag=THROTTLED_DAG, decision="allow")
                == served_seen
            )
            assert (
                total(samples, "lockgate_requests_total", dag=THROTTLED_DAG, decision="deny")
                == throttled_seen
            )
            assert total(samples, "lockgate_requests_total", dag=DENIED_DAG) == 5
        finally:
            assert stop(proc) == 0
            collector_runs = collector.runs()
            collector.stop()
        # one alert for the denied DAG, not a second from the worker that took over
        denial_alerts = [a for a in webhook.accepted if a.get("kind") == "denials"]
        assert len(denial_alerts) == 1, webhook.accepted
        assert DENIED_DAG in json.dumps(denial_alerts[0])

    # the audit trail says what the clients saw
    reader = AuditReader(gw.config.data_dir / "audit.db")
    assert reader.verify().ok
    rows = reader.search(limit=100_000)
    throttled = [r for r in rows if r.event == "throttled"]
    assert len(throttled) == statuses[THROTTLED_DAG].count(429)
    assert all(r.dag_id == THROTTLED_DAG for r in throttled)
    denied = [r for r in rows if r.event == "denied" and r.dag_id == DENIED_DAG]
    assert len(denied) == 5
    # spans of the requests served after the restarts reached the collector
    assert collector_runs.count("after") >= 20, collector_runs
    # every committed record mirrored as OCSF, in chain order, verifying
    lines = ocsf.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(rows)
    check_export = verify_export(lines)
    assert check_export.ok, check_export
    assert secret not in ocsf.read_text(encoding="utf-8")
    # each worker, the replacements too, fetched the credential from the vault by itself
    assert vault.logins >= 4


@pytest.mark.parametrize("ending", ["stopped", "killed"])
def test_two_replicas_share_the_quota_and_send_each_denial_once_across_a_handover(
    ending: str,
    tmp_path: Path,
    bearer_upstream: BearerUpstream,
    pg_state: Callable[..., PostgresStateSettings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCKGATE_MASTER_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    hmac_key = secrets.token_hex(32).encode()
    webhook = WebhookReceiver(hmac_key)
    first = scaffold(tmp_path / "a", bearer_upstream)
    shared = pg_state(catch_up_interval=0.25).model_dump(mode="json", exclude_none=True)
    with serving_in_thread(webhook):
        operations_config(first.config_path, tmp_path / "secrets", webhook, hmac_key)
        shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=shutil.ignore_patterns("data"))
        replicas: dict[str, tuple[Path, int, int]] = {}  # name: (config, http port, control port)
        for name in ("a", "b"):
            path = tmp_path / name / first.config_path.name
            data = yaml.safe_load(path.read_text())
            http_port = first.http_port if name == "a" else free_port()
            control_port = first.control_port if name == "a" else free_port()
            data["listeners"]["http"]["port"] = http_port
            data["listeners"]["control"]["port"] = control_port
            data["state"] = {"postgresql": {**shared, "replica_id": f"replica-{name}"}}
            data["issuer"] = first.config.issuer_url  # one issuer behind the load balancer
            data["audit"] = {**(data.get("audit") or {}), "ocsf": str(tmp_path / f"{name}.ocsf")}
            path.write_text(yaml.safe_dump(data))
            check = config_check(path)
            assert check.returncode == 0, check.stdout + check.stderr
            replicas[name] = (path, http_port, control_port)
        operator = State(load_config(replicas["a"][0]))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            operator.credentials.set(CREDENTIAL, bearer_upstream.secret)
            issuer = TokenIssuer(operator.keys, operator.config.issuer_url)

            def mint(dag: str, run: str) -> str:
                identity = TaskIdentity("prod", dag, "t", run, 1, -1)
                return issuer.mint(identity, RESOURCE, 300)[0]

            def url(name: str) -> str:
                return f"http://127.0.0.1:{replicas[name][1]}/{RESOURCE}/orders"

            warmup = mint("finance_daily", "warmup")
            for name, (path, _, _) in replicas.items():
                procs[name] = serve(path, own_group=True)
            for name, proc in procs.items():
                wait_serving(proc, url(name), warmup)

            # one quota across both replicas: 2/s, burst 2
            paced = mint(THROTTLED_DAG, "shared")
            start = time.monotonic()
            answers = [get_status(url("ab"[i % 2]), paced) for i in range(20)]
            elapsed = time.monotonic() - start
            assert set(answers) <= {200, 429} and 429 in answers, answers
            # the bucket's burst, its refill while the requests ran and one lease per replica
            assert answers.count(200) <= 2 + 2 * elapsed + 2, (answers, elapsed)

            # each replica counts its own answers: together, what the clients saw (a request
            # is counted as its answer goes out: allow the last one a moment)
            def counted() -> tuple[float, float]:
                scraped = [_scrape(replicas[name][2]) for name in replicas]
                return (
                    sum(total(m, "lockgate_quota_throttled_total") for m in scraped),
                    sum(
                        total(m, "lockgate_requests_total", dag=THROTTLED_DAG, decision="allow")
                        for m in scraped
                    ),
                )

            seen = (answers.count(429), answers.count(200))
            until(lambda: counted() == seen, 5, f"/metrics {counted()} vs answers {seen}")

            # denials on both replicas: alerted once, by one sender
            denied = mint(DENIED_DAG, "both")
            assert [get_status(url("ab"[i % 2]), denied) for i in range(6)] == [403] * 6
            until(lambda: sum(c for _, c in denial_counts(webhook, DENIED_DAG)) >= 6, 20, "alert")
            senders = {s for s, _ in denial_counts(webhook, DENIED_DAG)}
            assert len(senders) == 1, webhook.accepted
            (sender,) = senders
            holder = "a" if "replica-a" in sender else "b"
            survivor = "b" if holder == "a" else "a"
            # the sender stops (or dies: its lease lapses, 30 s); the other takes over where
            # it left off
            ended = procs.pop(holder)
            if ending == "stopped":
                assert stop(ended) == 0
            else:
                os.killpg(ended.pid, signal.SIGKILL)
                ended.wait(10)
            later = mint(f"{DENIED_DAG}_late", "after")
            assert [get_status(url(survivor), later) for _ in range(4)] == [403] * 4
            until(
                lambda: sum(c for _, c in denial_counts(webhook, f"{DENIED_DAG}_late")) >= 4,
                20 if ending == "stopped" else 40,
                "the survivor's alert",
            )
            time.sleep(2.0)  # a second window: an alert sent again would be in by now
            assert sum(c for _, c in denial_counts(webhook, DENIED_DAG)) == 6, webhook.accepted
            late = denial_counts(webhook, f"{DENIED_DAG}_late")
            assert sum(c for _, c in late) == 4 and {s for s, _ in late} != {sender}, late
        finally:
            for proc in procs.values():
                assert stop(proc) == 0
            operator.close()
    # each replica's OCSF mirror holds its whole chain (a killed one's: up to its death)
    for name in replicas:
        reader = AuditReader(tmp_path / name / "data" / "audit.db")
        lines = (tmp_path / f"{name}.ocsf").read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(reader.search(limit=100_000))
        assert verify_export(lines).ok


def test_a_killed_gateway_frees_its_quota_slots_and_its_ocsf_mirror_has_no_gap(
    tmp_path: Path,
) -> None:
    upstream = SlowUpstream(delay=5.0)
    try:
        gw = scaffold(tmp_path / "lg", upstream)
        ocsf = tmp_path / "audit.ocsf.jsonl"
        data = yaml.safe_load(gw.config_path.read_text())
        data["audit"] = {**(data.get("audit") or {}), "ocsf": str(ocsf)}
        gw.config_path.write_text(yaml.safe_dump(data))
        policy = gw.config_path.parent / "policies" / "orders.yaml"
        rules = yaml.safe_load(policy.read_text())
        rules["quotas"] = [
            {
                "id": "one-at-a-time",
                "principals": ["airflow:prod/finance_slow/*"],
                "resources": ["orders-api"],
                "concurrency": 1,
            }
        ]
        policy.write_text(yaml.safe_dump(rules))
        assert config_check(gw.config_path).returncode == 0
        busy, _ = gw.mint("finance_slow", "held")
        other, _ = gw.mint("finance_daily", "traffic")
        slow_url, quick_url = gw.url("/orders/slow"), gw.url()
        proc = serve(gw.config_path, "--workers", "2", own_group=True)
        try:
            wait_serving(proc, quick_url, other)
            time.sleep(0.5)
            held = threading.Thread(target=get_status, args=(slow_url, busy), daemon=True)
            held.start()  # holds the one slot upstream for 5 s
            time.sleep(0.5)
            assert get_status(quick_url, busy) == 429
            assert [get_status(quick_url, other) for _ in range(20)] == [200] * 20
            os.killpg(proc.pid, signal.SIGKILL)  # the whole gateway: supervisor, writer, workers
            proc.wait(10)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc = serve(gw.config_path, "--workers", "2")
        try:
            wait_serving(proc, quick_url, other)
            # the dead process's slot is given back once it is not heard from (15 s)
            until(lambda: get_status(quick_url, busy) == 200, 25, "the killed slot freed")
            assert time.monotonic() - killed_at < 25
            assert [get_status(quick_url, other) for _ in range(10)] == [200] * 10
        finally:
            assert stop(proc) == 0
    finally:
        upstream.stop()
    reader = AuditReader(gw.config.data_dir / "audit.db")
    assert reader.verify().ok
    rows = reader.search(limit=100_000)
    lines = ocsf.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(rows)  # every chained row mirrored once: no gap, no repeat
    check = verify_export(lines)
    assert check.ok, check.problems
    assert not (gw.config.data_dir / "metrics").exists()


def test_config_check_refuses_the_tracing_headers_file_serve_refuses(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    data = yaml.safe_load(gw.config_path.read_text())
    data["tracing"] = {
        "enabled": True,
        "otlp_endpoint": "http://127.0.0.1:4318",
        "otlp_headers_file": str(tmp_path / "absent-otlp-headers"),
    }
    gw.config_path.write_text(yaml.safe_dump(data))
    check = config_check(gw.config_path)
    assert check.returncode == 2, check.stdout + check.stderr
    assert "tracing.otlp_headers_file: No such file or directory" in check.stderr
    proc = serve(gw.config_path)
    assert proc.wait(30) == 2  # serve refuses it too
    # a headers file serve would take, check takes; one it cannot parse, both refuse
    headers = tmp_path / "absent-otlp-headers"
    headers.write_text("X-Api-Key: k-1\n")
    assert config_check(gw.config_path).returncode == 0
    headers.write_text("not a header line\n")
    check = config_check(gw.config_path)
    assert check.returncode == 2 and ":1: expected 'Name: value'" in check.stderr
    assert "not a header line" not in check.stderr  # named by line, never by value
    assert serve(gw.config_path).wait(30) == 2


def test_a_reload_changes_the_quota_in_every_worker_and_survives_new_ops_settings(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    hmac_key = secrets.token_hex(32).encode()
    webhook = WebhookReceiver(hmac_key)
    collector = OtlpCollector()
    with serving_in_thread(webhook):
        operations_config(gw.config_path, tmp_path / "secrets", webhook, hmac_key)
        policy = gw.config_path.parent / "policies" / "orders.yaml"
        paced_policy = policy.read_text()
        token, _ = gw.mint(THROTTLED_DAG, "reloads")
        url = gw.url()
        proc = serve(gw.config_path, "--workers", "2")

        def answers(n: int = 20) -> list[int]:
            return [get_status(url, token) for _ in range(n)]  # both workers

        def reload() -> None:
            proc.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            assert proc.poll() is None, "serve exited on a reload"

        try:
            wait_serving(proc, url, token)
            until(lambda: len(workers_of(proc)) == 2, 15, "two workers")
            time.sleep(0.5)
            assert 429 in answers()
            # the quota removed: every worker serves every request
            rules = yaml.safe_load(paced_policy)
            del rules["quotas"]
            policy.write_text(yaml.safe_dump(rules))
            reload()
            until(lambda: answers() == [200] * 20, 15, "every worker without the quota")
            # tracing switched on, the alerts' window changed: sections a reload refuses
            # (they take effect at the next start); serving goes on, audited as refused
            data = yaml.safe_load(gw.config_path.read_text())
            data["tracing"] = {
                "enabled": True,
                "otlp_endpoint": f"http://127.0.0.1:{collector.port}",
            }
            data["alerts"]["denials"] = {"window": 2}
            gw.config_path.write_text(yaml.safe_dump(data))
            reload()
            assert answers(10) == [200] * 10
            # the quota back: every worker throttles again
            policy.write_text(paced_policy)
            reload()
            time.sleep(1.0)
            until(lambda: 429 in answers(), 15, "the quota back")
            assert len(workers_of(proc)) == 2
            # a broken quota (an id given twice): the reload fails, the running quota stays
            rules = yaml.safe_load(paced_policy)
            rules["quotas"].append({**rules["quotas"][0], "rate": 1000})
            policy.write_text(yaml.safe_dump(rules))
            reload()
            time.sleep(1.5)  # the bucket refills
            assert 429 in answers(), "the quota went with the failed reload"
        finally:
            assert stop(proc) == 0
            collector.stop()
    reader = AuditReader(gw.config.data_dir / "audit.db")
    assert reader.verify().ok
    reloads = [r for r in reader.search(limit=100_000) if r.event == "config_reloaded"]
    # the three reloads after the change, refused by each worker, naming the sections
    assert len(reloads) == 6
    assert {r.reason for r in reloads} == {"refused"}
    assert all(r.detail["sections"] == ["alerts", "tracing"] for r in reloads)
    assert sorted(r.detail["worker"] for r in reloads) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("jsonl", "ocsf", "refusal"),
    [
        ("mirror.jsonl", "mirror.jsonl", "audit.ocsf: the same file as audit.jsonl"),
        (None, "data/audit.db", "audit.ocsf: "),
        ("data/revocations.db-wal", None, "audit.jsonl: "),
        (None, "data/keys/index.json", "audit.ocsf: "),
        (None, "data/audit-journal/x.jsonl", "audit.ocsf: "),
    ],
)
def test_an_audit_mirror_over_the_other_or_over_state_is_refused_by_check_and_serve(
    tmp_path: Path, jsonl: str | None, ocsf: str | None, refusal: str
) -> None:
    # the writer cuts a mirror back to its last whole line: over audit.db that is a wreck
    config = tmp_path / "lockgate.yaml"
    audit = {k: v for k, v in {"jsonl": jsonl, "ocsf": ocsf}.items() if v is not None}
    config.write_text(yaml.safe_dump({"audit": audit}))
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        load_config(config)  # what both `config check` and `serve` load first
    fine = {"jsonl": "data/audit.jsonl", "ocsf": "data/audit.ocsf.jsonl"}
    config.write_text(yaml.safe_dump({"audit": fine}))
    load_config(config)


def test_config_check_refuses_an_audit_mirror_serve_could_not_write(
    tmp_path: Path, bearer_upstream: BearerUpstream
) -> None:
    # serve would start, then refuse every allowed request: the mirrors fail closed
    gw = scaffold(tmp_path / "lg", bearer_upstream)
    data = yaml.safe_load(gw.config_path.read_text())
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for ocsf, refusal in [
        (a_file / "audit.ocsf.jsonl", f"audit.ocsf: {a_file} is not a directory"),
        (tmp_path, f"audit.ocsf: {tmp_path} is a directory"),
    ]:
        data["audit"] = {**(data.get("audit") or {}), "ocsf": str(ocsf)}
        gw.config_path.write_text(yaml.safe_dump(data))
        check = config_check(gw.config_path)
        assert check.returncode == 2 and refusal in check.stderr, check.stderr
    data["audit"]["ocsf"] = str(tmp_path / "new" / "dirs" / "audit.ocsf.jsonl")  # made by serve
    gw.config_path.write_text(yaml.safe_dump(data))
    assert config_check(gw.config_path).returncode == 0
