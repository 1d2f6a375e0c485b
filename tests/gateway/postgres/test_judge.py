"""The PostgreSQL judge: cached classification, policy per statement, built-in rules, cost."""

# ruff: noqa: S608  (texts built to be long; nothing is sent anywhere)

from __future__ import annotations

import threading
import time

from lockgate.gateway.postgres import codec
from lockgate.gateway.postgres.classified import Statement, Unplaceable
from lockgate.gateway.postgres.classify import classify
from lockgate.gateway.postgres.judge import (
    CATALOG_RULE,
    NO_OBJECT_RULE,
    THREAD_TEXT_CHARS,
    Admission,
    Judged,
    Refusal,
    audit_text,
)
from lockgate.gateway.postgres.scope import SessionScope
from tests.gateway.postgres.test_flow import FlowHarness, cc, rfq


def test_classification_is_cached_and_shared_between_sessions() -> None:
    h = FlowHarness()
    calls: list[str] = []
    judge = h.flow.judge
    real = judge._classify

    def counting(text, scope):  # type: ignore[no-untyped-def]
        calls.append(text)
        return real(text, scope)

    judge._classify = counting
    first = judge.judged("SELECT * FROM t", h.flow.scope)
    second = judge.judged("SELECT * FROM t", h.flow.scope)
    assert isinstance(first, Judged) and first is second and calls == ["SELECT * FROM t"]
    # Another session of the same resource, same scope: the same judged text.
    other = FlowHarness()
    other.ctx.decisions = h.ctx.decisions
    key_scope = h.flow.scope
    assert other.flow.judge.judged("SELECT * FROM t", key_scope) is first


def test_unplaceable_texts_are_not_cached() -> None:
    h = FlowHarness()
    judge = h.flow.judge
    assert isinstance(judge.judged("SELECT * FROM nowhere", h.flow.scope), Unplaceable)
    assert len(h.ctx.decisions) == 0


def test_catalog_reads_are_builtin_unless_denied_explicitly() -> None:
    h = FlowHarness(allow=[])
    judged = h.flow.judge.judged("SELECT oid FROM pg_type WHERE typname = 'int4'", h.flow.scope)
    assert isinstance(judged, Judged)
    verdict = h.flow.judge.decide(judged)
    assert isinstance(verdict, Admission) and verdict.rule == CATALOG_RULE
    h.policy.deny.append(("read", "pg_catalog.*"))
    assert isinstance(h.flow.judge.decide(judged), Refusal)
    # Not a read: not built in.
    h2 = FlowHarness(allow=[])
    judged = h2.flow.judge.judged("SELECT * FROM information_schema.tables", h2.flow.scope)
    assert isinstance(judged, Judged)
    assert isinstance(h2.flow.judge.decide(judged), Admission)


def test_a_catalog_read_does_not_cover_a_denied_table() -> None:
    h = FlowHarness(allow=[])
    judged = h.flow.judge.judged("SELECT * FROM pg_type, other.secret", h.flow.scope)
    assert isinstance(judged, Judged)
    verdict = h.flow.judge.decide(judged)
    assert isinstance(verdict, Refusal) and verdict.obj == "other.secret"


def test_no_object_statement_rule() -> None:
    h = FlowHarness(allow=[])
    judged = h.flow.judge.judged("SELECT 1", h.flow.scope)
    assert isinstance(judged, Judged)
    verdict = h.flow.judge.decide(judged)
    assert isinstance(verdict, Admission) and verdict.rule == NO_OBJECT_RULE


def test_policy_requests_rebuilt_when_claims_change() -> None:
    h = FlowHarness()
    judge = h.flow.judge
    judged = judge.judged("SELECT * FROM t", h.flow.scope)
    assert isinstance(judged, Judged)
    judge.decide(judged)
    judge.decide(judged)
    first, second = h.policy.seen[-2:]
    assert first is second  # built once per claims
    judge.claims = type(judge.claims)(**{**vars(judge.claims), "sub": "airflow:prod/x/y"})
    judge.decide(judged)
    assert h.policy.seen[-1].principal == "airflow:prod/x/y"


def test_audit_text_is_capped() -> None:
    assert audit_text("x" * 5000).endswith("…") and len(audit_text("x" * 5000)) == 2049


async def test_cached_statement_cost() -> None:
    """Gateway CPU of one cached statement, Query to outcome (target: 20 µs)."""
    h = FlowHarness()
    text = "SELECT abalance FROM t WHERE aid = 1"
    query = codec.Message(codec.QUERY, codec.query(text)[5:])
    answers = [
        codec.Message(codec.ROW_DESCRIPTION, codec.row_description([("abalance", 23)])[5:]),
        codec.Message(codec.DATA_ROW, codec.data_row([b"0"])[5:]),
        codec.Message(codec.COMMAND_COMPLETE, cc("SELECT 1")[5:]),
        codec.Message(codec.READY_FOR_QUERY, rfq()[5:]),
    ]
    flow = h.flow
    await flow.from_client(query)
    for a in answers:
        flow.from_server(a)
    rounds = 2000
    t0 = time.perf_counter()
    for _ in range(rounds):
        await flow.from_client(query)
        for a in answers:
            flow.from_server(a)
    per_statement = (time.perf_counter() - t0) / rounds * 1e6
    print(f"flow: {per_statement:.1f} µs per cached simple-query statement")
    assert per_statement < 500  # a loose bound: CI machines vary; the figure is printed


def test_catalog_relations_holding_data_need_a_grant() -> None:
    rows = [("pg_catalog", n) for n in ("pg_stat_activity", "pg_stats", "pg_authid", "pg_type")]
    h = FlowHarness(allow=[], catalog=rows)
    for text in (
        "SELECT * FROM pg_stat_activity",
        "SELECT * FROM pg_stats",
        "SELECT * FROM pg_authid",
    ):
        judged = h.flow.judge.judged(text, h.flow.scope)
        assert isinstance(judged, Judged)
        assert isinstance(h.flow.judge.decide(judged), Refusal), text
    h.policy.allow.append(("read", "pg_catalog.pg_stat_activity"))
    judged = h.flow.judge.judged("SELECT * FROM pg_stat_activity", h.flow.scope)
    assert isinstance(judged, Judged)
    assert isinstance(h.flow.judge.decide(judged), Admission)


def test_sequence_values_settings_and_user_mappings_need_a_grant() -> None:
    rows = [
        ("pg_catalog", "pg_sequences"),
        ("pg_catalog", "pg_settings"),
        ("information_schema", "user_mapping_options"),
    ]
    h = FlowHarness(allow=[], catalog=rows)
    for text in (
        "SELECT last_value FROM pg_sequences",
        "SELECT setting FROM pg_settings",
        "SELECT option_value FROM information_schema.user_mapping_options",
    ):
        judged = h.flow.judge.judged(text, h.flow.scope)
        assert isinstance(judged, Judged)
        assert isinstance(h.flow.judge.decide(judged), Refusal), text


async def test_cached_prepared_statement_cost() -> None:
    """Gateway CPU of one Bind/Execute/Sync of a prepared statement, to its outcome."""
    from lockgate.gateway.postgres.codec import Bind, Execute, Parse

    def msg(frame: bytes) -> codec.Message:
        return codec.Message(frame[0], frame[5:])

    h = FlowHarness()
    flow = h.flow
    parse = Parse("s1", "SELECT abalance FROM t WHERE aid = $1", ())
    await flow.from_client(msg(codec.encode_message(parse)))
    await flow.from_client(msg(codec.sync()))
    flow.from_server(msg(codec.parse_complete()))
    flow.from_server(msg(rfq()))
    client = [
        msg(codec.encode_message(Bind("", "s1", (), (b"1",), ()))),
        msg(codec.encode_message(Execute("", 0))),
        msg(codec.sync()),
    ]
    server = [
        msg(codec.bind_complete()),
        msg(codec.data_row([b"0"])),
        msg(cc("SELECT 1")),
        msg(rfq()),
    ]
    rounds = 2000
    t0 = time.perf_counter()
    for _ in range(rounds):
        for c in client:
            await flow.from_client(c)
        for a in server:
            flow.from_server(a)
    per_statement = (time.perf_counter() - t0) / rounds * 1e6
    print(f"flow: {per_statement:.1f} µs per cached prepared statement")
    assert len(h.admitted()) == rounds and per_statement < 500


def test_a_record_names_the_rule_that_allowed_its_own_object() -> None:
    # Two tables allowed by two rules: the record's object is the first table, its rule
    # that table's rule (not the last decision's); the detail gives each object's rule.
    h = FlowHarness()
    text = "SELECT * FROM sales.orders JOIN public.t ON true"
    judged = h.flow.judge.judged(text, h.flow.scope)
    assert isinstance(judged, Judged)
    verdict = h.flow.judge.decide(judged)
    assert isinstance(verdict, Admission)
    (record,) = judged.records
    assert record.obj == "sales.orders"
    assert verdict.rule == "allow-sales.*" and verdict.reason == "matched"
    assert verdict.rule_for(record) == ("allow-sales.*", "matched")
    assert verdict.detail_for(record)["rules"] == {
        "read sales.orders": "allow-sales.*",
        "read public.t": "allow-public.*",
    }
    # Per statement of a multi-statement text; a catalog read keeps its built-in rule.
    judged = h.flow.judge.judged("BEGIN; SELECT * FROM public.t, pg_type", h.flow.scope)
    assert isinstance(judged, Judged)
    verdict = h.flow.judge.decide(judged)
    assert isinstance(verdict, Admission)
    begin, select = judged.records
    assert verdict.rule == NO_OBJECT_RULE == verdict.rule_for(begin)[0]
    assert verdict.rule_for(select) == ("allow-public.*", "matched")
    assert verdict.detail_for(select)["rules"] == {
        "read public.t": "allow-public.*",
        "read pg_catalog.pg_type": CATALOG_RULE,
    }
    assert verdict.detail_for(begin) is begin.detail


async def test_a_long_text_is_classified_off_the_event_loop() -> None:
    h = FlowHarness()
    judge = h.flow.judge
    real = judge._classify
    threads: list[str] = []

    def recording(text, scope):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real(text, scope)

    judge._classify = recording
    long_text = "SELECT * FROM sales.orders WHERE item IN (" + ",".join(["'x'"] * 5000) + ")"
    assert len(long_text) >= THREAD_TEXT_CHARS
    first = await judge.judged_async(long_text, h.flow.scope)
    assert isinstance(first, Judged) and threads[-1] != threading.main_thread().name
    assert await judge.judged_async(long_text, h.flow.scope) is first  # cached
    assert len(threads) == 1
    short = await judge.judged_async("SELECT * FROM sales.orders", h.flow.scope)
    assert isinstance(short, Judged) and threads[-1] == threading.main_thread().name
    refused = await judge.judged_async("SELECT * FROM nowhere, " + long_text[14:], h.flow.scope)
    assert isinstance(refused, Unplaceable)


async def test_a_scope_that_moves_during_a_threaded_classification_is_classified_again() -> None:
    h = FlowHarness()
    judge = h.flow.judge
    real = judge._classify
    scope = h.scope  # the session's settled scope
    seen: list[tuple[object, ...]] = []

    def moving(text, scope_):  # type: ignore[no-untyped-def]
        seen.append(scope_.key())
        if len(seen) == 1:  # the server's answer to an earlier SET lands meanwhile
            scope.statement_done(classify_one("SET search_path = sales", scope), "SET")
            scope.ready("I")
        return real(text, scope_)

    judge._classify = moving
    text = "SELECT * FROM t WHERE " + " OR ".join(["1 = 1"] * 3000)
    judged = await judge.judged_async(text, scope)
    assert isinstance(judged, Judged) and len(seen) == 2 and seen[0] != seen[1]
    assert judged.accesses[0].obj == "sales.t"  # under the scope of now


def classify_one(text: str, scope: SessionScope) -> Statement:
    (statement,) = classify(text, scope).statements
    return statement
