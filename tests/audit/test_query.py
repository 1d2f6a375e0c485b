"""The audit query API (filters, pages, counts, histograms) on the local chain and on the
shared trail in a real PostgreSQL, with records written by the real audit log; every answer
checked against a brute-force pass over every record."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from lockgate.audit import (
    AuditLog,
    AuditPage,
    AuditQuery,
    AuditReader,
    AuditRecord,
    AuditRow,
    HistogramBucket,
)
from lockgate.audit.query import MAX_BUCKETS, REQUEST_OUTCOMES, encode_cursor
from lockgate.config import PostgresStateSettings
from tests.audit.shared_helpers import shipping

BASE_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EVENTS = ("allowed", "denied", "throttled", "upstream_error", "admitted", "token_issued")
DAGS = ("etl", "billing", "<script>alert(1)</script>", None)


def _record(i: int, replica: str) -> AuditRecord:
    event = EVENTS[i % len(EVENTS)]
    detail: dict[str, object] = {"i": i}
    if i % 11 == 0:
        detail["shadow"] = {"decision": "deny", "rule": None, "reason": "no rule matches"}
    elif i % 11 == 1:
        detail["note"] = 'a value holding the text "shadow": {"decision"}'
    elif i % 11 == 2:
        detail["shadow"] = "not a verdict"  # only an object is a shadow verdict
    if i % 13 == 0:
        detail["nul"] = "a\x00b"  # JSON escapes it; PostgreSQL's jsonb would refuse it
    if i % 19 == 5:
        detail["ref"] = f"req-{i}"  # an outcome following its admitted record
    if i % 17 == 0:
        detail["text"] = "\\u0000 \\\x00"  # a backslash before "u0000", and before a NUL
    return AuditRecord(
        event=event,
        ts=BASE_TS + (i // 2) * 7.0,  # two records per timestamp: ties broken by replica, seq
        deployment=("prod", "stage")[i % 2],
        dag_id=DAGS[i % len(DAGS)],
        task_id=f"t{i % 5}",
        run_id=f"run-{i % 3}",
        try_number=1 + i % 2,
        principal=f"airflow:prod/etl/t{i % 5}",
        resource=("orders", "billing-db")[i % 3 % 2],
        action=("read", "write", "admin")[i % 3],
        object=f"sales/{i}",
        decision={"denied": "deny", "throttled": "deny", "upstream_error": "error"}.get(
            event, "allow"
        ),
        jti=f"jti-{i % 7}",
        rule=f"r-{i % 4}",
        detail=detail,
    )


def _write(db_path: Path, replica: str, n: int, settings: PostgresStateSettings | None) -> None:
    log = AuditLog(db_path, shipping=shipping(replica, settings) if settings else None)
    try:
        for i in range(n):
            log.emit(_record(i, replica))
        assert log.flush(10)
    finally:
        log.close()  # ships what is committed before it returns


@pytest.fixture(params=["sqlite", "postgresql"])
def reader(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[AuditReader, list[AuditRow]]]:
    """A reader over records of either store, and every record newest first as the store
    orders them (brute force: by seq locally, by (ts, replica, seq) on the shared trail)."""
    if request.param == "sqlite":
        _write(tmp_path / "audit.db", "r1", 240, None)
        r = AuditReader(tmp_path / "audit.db")
        every = list(r.iter_rows())[::-1]
    else:
        pg_state = request.getfixturevalue("pg_state")
        settings = pg_state()
        _write(tmp_path / "r1" / "audit.db", "r1", 150, settings)
        _write(tmp_path / "r2" / "audit.db", "r2", 90, settings)
        r = AuditReader(tmp_path / "r1" / "audit.db", shipping=shipping("r1", settings))
        every = list(r.iter_rows())[::-1]
        assert {row.replica for row in every} == {"r1", "r2"}
    assert len(every) == 240
    with r:
        yield r, every


_FIELD_OF = {"dag": "dag_id", "run": "run_id", "task": "task_id"}


def _matches(row: AuditRow, q: AuditQuery) -> bool:
    for f in fields(AuditQuery):
        want = getattr(q, f.name)
        if f.name == "shadow":
            if want and not isinstance(row.detail.get("shadow"), dict):
                return False
        elif want is None:
            continue
        elif f.name == "since":
            if row.ts < want:
                return False
        elif f.name == "until":
            if row.ts >= want:
                return False
        elif getattr(row, _FIELD_OF.get(f.name, f.name)) != want:
            return False
    return True


QUERIES = [
    AuditQuery(),
    AuditQuery(deployment="stage"),
    AuditQuery(dag="etl"),
    AuditQuery(dag="<script>alert(1)</script>", decision="deny"),
    AuditQuery(run="run-1", task="t3"),
    AuditQuery(try_number=2, action="write"),
    AuditQuery(resource="billing-db", event="denied"),
    AuditQuery(decision="error"),
    AuditQuery(principal="airflow:prod/etl/t2", jti="jti-3"),
    AuditQuery(since=BASE_TS + 140, until=BASE_TS + 500),
    AuditQuery(shadow=True),
    AuditQuery(shadow=True, dag="etl", since=BASE_TS + 10),
    AuditQuery(dag="no-such-dag"),
    AuditQuery(rule="r-2", decision="allow"),
]


def _key(row: AuditRow) -> tuple[str | None, int]:
    return (row.replica, row.seq)


@pytest.mark.parametrize("q", QUERIES, ids=repr)
def test_every_filter_pages_and_counts_as_brute_force(
    reader: tuple[AuditReader, list[AuditRow]], q: AuditQuery
) -> None:
    r, every = reader
    expected = [_key(row) for row in every if _matches(row, q)]
    assert r.count(q) == len(expected)
    assert [_key(row) for row in r.query(q, limit=1000).rows] == expected
    # page by page: no gap, no repeat, the cursor ends with the last page
    got: list[tuple[str | None, int]] = []
    older: str | None = None
    pages = 0
    while True:
        page = r.query(q, limit=7, older=older)
        assert len(page.rows) <= 7
        got += [_key(row) for row in page.rows]
        pages += 1
        older = page.older
        if older is None:
            break
    assert got == expected
    assert pages == max(1, math.ceil(len(expected) / 7))


@pytest.mark.parametrize(
    "names", [("rule", "resource"), ("dag",), ("dag_id", "event", "try_number")]
)
@pytest.mark.parametrize("q", [AuditQuery(), AuditQuery(event="allowed", since=BASE_TS + 99)])
def test_count_by_is_a_brute_force_count(
    reader: tuple[AuditReader, list[AuditRow]], q: AuditQuery, names: tuple[str, ...]
) -> None:
    r, every = reader
    expected = Counter(
        tuple(getattr(row, _FIELD_OF.get(f, f)) for f in names) for row in every if _matches(row, q)
    )
    assert r.count_by(q, names) == dict(expected)


def test_count_by_only_named_fields(reader: tuple[AuditReader, list[AuditRow]]) -> None:
    r, _ = reader
    for names in [("detail",), ("rule; DROP TABLE audit",), ()]:
        with pytest.raises(ValueError, match="cannot count by"):
            r.count_by(AuditQuery(), names)


def test_shadow_means_a_verdict_object_in_detail(
    reader: tuple[AuditReader, list[AuditRow]],
) -> None:
    r, every = reader
    rows = r.query(AuditQuery(shadow=True), limit=1000).rows
    assert rows and all(isinstance(row.detail["shadow"], dict) for row in rows)
    assert all(row.detail["i"] % 11 == 0 for row in rows)
    texts = [row for row in every if row.detail.get("note")]
    assert texts and not {_key(t) for t in texts} & {_key(row) for row in rows}


def _bucket_order(key: tuple[float, str | None]) -> tuple[float, bool, str]:
    return (key[0], key[1] is not None, key[1] or "")


@pytest.mark.parametrize("bucket", [1.0, 60.0, 300.0])
@pytest.mark.parametrize(
    "q", [AuditQuery(), AuditQuery(deployment="prod"), AuditQuery(event="denied")], ids=repr
)
def test_histogram_is_a_brute_force_count(
    reader: tuple[AuditReader, list[AuditRow]], q: AuditQuery, bucket: float
) -> None:
    r, every = reader
    window = AuditQuery(**{**q.__dict__, "since": BASE_TS, "until": BASE_TS + 400})
    for query in (window, q) if bucket > 1 else (window,):
        counts: Counter[tuple[float, str | None, str]] = Counter()
        for row in every:
            if _matches(row, query) and row.event in REQUEST_OUTCOMES:
                counts[(math.floor(row.ts / bucket) * bucket, row.dag_id, row.event)] += 1
        starts = sorted({(s, d) for s, d, _ in counts}, key=_bucket_order)
        expected = [
            HistogramBucket(
                s,
                d,
                counts[(s, d, "allowed")],
                counts[(s, d, "denied")],
                counts[(s, d, "throttled")],
                counts[(s, d, "upstream_error")],
            )
            for s, d in starts
        ]
        assert r.histogram(query, bucket=bucket) == expected
        assert sum(b.allowed + b.denied + b.throttled + b.upstream_errors for b in expected)


def test_histogram_refuses_too_many_buckets_and_a_short_bucket(
    reader: tuple[AuditReader, list[AuditRow]],
) -> None:
    r, _ = reader
    with pytest.raises(ValueError, match="at most 500"):
        r.histogram(AuditQuery(since=BASE_TS, until=BASE_TS + MAX_BUCKETS * 60), bucket=60)
    with pytest.raises(ValueError, match="at most 500"):
        r.histogram(AuditQuery(), bucket=1)  # the records span 840 s
    with pytest.raises(ValueError, match="at least 1 second"):
        r.histogram(AuditQuery(), bucket=0.5)
    assert r.histogram(AuditQuery(dag="no-such-dag"), bucket=1) == []


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64 at all!",
        encode_cursor(["x", 1]),
        encode_cursor(["l", -1]),
        encode_cursor(["l", "1 OR 1=1"]),
        encode_cursor(["l", True]),
        encode_cursor(["s", "ts", "r1", 1]),
        encode_cursor(["s", 1.0, 7, 1]),
        encode_cursor({"seq": 1}),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_cursor_is_a_value_error(
    reader: tuple[AuditReader, list[AuditRow]], cursor: str
) -> None:
    r, _ = reader
    with pytest.raises(ValueError):
        r.query(AuditQuery(), older=cursor)


def test_a_cursor_of_the_other_store_is_refused(
    reader: tuple[AuditReader, list[AuditRow]],
) -> None:
    r, _ = reader
    shared = r.shipping is not None
    other = encode_cursor(["l", 5] if shared else ["s", BASE_TS, "r1", 5])
    with pytest.raises(ValueError, match="not one of this trail's"):
        r.query(AuditQuery(), older=other)


def test_one_record_by_seq_and_replica(reader: tuple[AuditReader, list[AuditRow]]) -> None:
    r, every = reader
    for row in every[:3] + every[-3:]:
        found = r.record(row.seq, row.replica)
        assert found is not None and found.to_dict() == row.to_dict()
    assert r.record(10_000, every[0].replica) is None


def test_search_keeps_its_answer(reader: tuple[AuditReader, list[AuditRow]]) -> None:
    r, every = reader
    newest = [row for row in every if row.dag_id == "etl"][:5]
    assert [_key(row) for row in r.search(dag="etl", limit=5)] == [_key(x) for x in newest[::-1]]


@pytest.mark.parametrize(("dag", "since"), [(None, None), ("etl", BASE_TS + 300)])
def test_usage_rows_are_the_rows_suggest_reads(
    reader: tuple[AuditReader, list[AuditRow]], dag: str | None, since: float | None
) -> None:
    from lockgate.audit.reader import USAGE_FIELDS

    r, every = reader
    expected = [
        {
            **{f: getattr(row, f) for f in USAGE_FIELDS},
            "detail": {"ref": True} if "ref" in row.detail else {},
        }
        for row in every[::-1]
        if (dag is None or row.dag_id == dag) and (since is None or row.ts >= since)
    ]
    got = list(r.usage_rows(dag=dag, since=since, batch=7))
    assert any(row["detail"] for row in got)
    key = lambda row: (row["ts"], row["dag_id"] or "", row["object"])  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
    assert [row["ts"] for row in got] == sorted(row["ts"] for row in got)  # oldest first


def test_nothing_written_yet(tmp_path: Path) -> None:
    r = AuditReader(tmp_path / "audit.db")
    assert r.query(AuditQuery()) == AuditPage([], None)
    assert r.count(AuditQuery(dag="x")) == 0
    assert r.histogram(AuditQuery(), bucket=60) == []
    assert r.record(1) is None
    assert list(r.usage_rows()) == []
    assert not (tmp_path / "audit.db").exists()


def test_last_uses_is_each_tokens_newest_record_after_its_issue(
    reader: tuple[AuditReader, list[AuditRow]],
) -> None:
    """Against brute force over every record, on both stores: the newest record of each
    token at or after the given time, other than its token_issued; unused ones left out."""
    r, every = reader
    since = {f"jti-{n}": BASE_TS + 300.0 * n for n in range(7)} | {"jti-unknown": 0.0}
    expected: dict[str, tuple[float, str]] = {}
    for row in every:  # newest first: the first seen per token is its newest
        if row.jti in since and row.event != "token_issued" and row.ts >= since[row.jti]:
            expected.setdefault(row.jti, (row.ts, row.event))
    assert r.last_uses(since) == expected
    assert "jti-unknown" not in expected
