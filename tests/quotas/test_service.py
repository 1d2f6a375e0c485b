"""The quota service the server builds: the policy store's quotas, budgets opened only when
a quota needs them, a reload that adds a quota applying at once."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable
from pathlib import Path

from lockgate.config import parse_config
from lockgate.policy import PolicyStore
from lockgate.quotas import NO_TICKET, Throttled
from lockgate.quotas.gate import QuotaService
from lockgate.store import Database, SqliteDatabase
from tests.quotas.conftest import task_claims

RULES = """
rules:
  - id: etl-read
    effect: allow
    principals: ["airflow:prod/*"]
    actions: [read]
    resources: [orders-api]
"""
QUOTA = """
quotas:
  - id: etl-one-at-a-time
    principals: ["airflow:prod/*"]
    resources: [orders-api]
    concurrency: 1
"""


def test_no_quota_opens_nothing_a_reload_adds_one(tmp_path: Path) -> None:
    policy_file = tmp_path / "team.yaml"
    policy_file.write_text(RULES)
    store = PolicyStore(lambda: [policy_file])
    config = parse_config({"data_dir": str(tmp_path / "data")}, tmp_path / "lockgate.yaml")
    opened: list[str] = []

    def database_for(name: str) -> Database:
        opened.append(name)
        return SqliteDatabase(tmp_path / "data" / f"{name}.db")

    service = QuotaService(config, store, database_for)
    gate = service.gate
    assert gate.admit(task_claims(), "orders-api", "read", "/o") is NO_TICKET
    assert opened == []  # no quota: no quota state

    policy_file.write_text(RULES + QUOTA)
    stamp = time.time() - 10  # settled, as the store's cheap check wants
    os.utime(policy_file, (stamp, stamp))
    assert store.reload_if_changed()
    ticket = gate.admit(task_claims(), "orders-api", "read", "/o")
    assert not isinstance(ticket, Awaitable | Throttled) and ticket is not NO_TICKET
    assert opened == ["quotas"]
    refused = gate.admit(task_claims(task="other"), "orders-api", "read", "/o")
    assert refused == Throttled("etl-one-at-a-time", "concurrency", 1.0)
    assert not asyncio.iscoroutine(refused)  # SQLite: answered inline
    ticket.release()
    service.close()  # writes what it held: nothing
    reopened = SqliteDatabase(tmp_path / "data" / "quotas.db")
    with reopened.read() as cur:
        assert cur.execute("SELECT COUNT(*) FROM quota_holders").fetchone() == (0,)
    reopened.close()
