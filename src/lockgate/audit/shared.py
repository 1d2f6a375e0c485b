"""The shared audit trail: every replica's chain in one database, plus signed checkpoints.

Tables (domain ``audit``, created by ``lockgate db upgrade`` or at start):

- ``audit_records``: the rows of every replica's local chain, exactly as chained there
  (``seq``, every record column, ``prev_hash``, ``hash``) under ``(replica, seq)``, so each
  chain re-verifies from this table alone. Inserts are idempotent (``ON CONFLICT DO NOTHING``):
  a shipper that dies mid-batch ships the batch again and nothing is doubled.
- ``audit_checkpoints``: every few seconds a replica signs (Ed25519, see
  :func:`lockgate.audit.shipping.checkpoint_key`) the heads ``{replica: [seq, hash]}`` of all
  the chains it sees here; ``n`` counts each replica's checkpoints 1, 2, 3 ...

Step 2 only adds indexes for the console (a token's last use; one event over a window; the
request histogram from the index alone): readers need step 1 (:func:`readable`), so a trail
whose newer step waits for ``lockgate db upgrade`` is read as it is, only slower.

:meth:`SharedTrail.verify` proves: each replica's chain links from seq 1 to its last shipped
row (no row edited, inserted, removed or reordered), every checkpoint is signed by the
gateway's key and numbered without gaps, and every head a checkpoint names is still there
with that hash (a chain rewritten or cut short after a checkpoint is caught). What it cannot
see: rows shipped after the newest checkpoint that are dropped together with it; the local
chain of each replica (``audit verify`` on that replica) still holds them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lockgate.audit.chain import VerifyResult, row_from_columns, walk, where
from lockgate.audit.record import GENESIS, RECORD_FIELDS, AuditRow, canonical_json
from lockgate.audit.shipping import ChainMismatch
from lockgate.store import Cursor, Database, Migration, pending, register_domain

DOMAIN = "audit"

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit_records and audit_checkpoints: every replica's chain and signed heads",
        """
CREATE TABLE IF NOT EXISTS audit_records (
    replica TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    event TEXT NOT NULL,
    deployment TEXT, dag_id TEXT, task_id TEXT, run_id TEXT,
    try_number INTEGER, map_index INTEGER,
    principal TEXT, resource TEXT, action TEXT, object TEXT,
    decision TEXT, rule TEXT, reason TEXT,
    status INTEGER, latency_ms REAL, bytes_in INTEGER, bytes_out INTEGER,
    jti TEXT,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    shipped_at REAL NOT NULL,
    stored_json TEXT,
    PRIMARY KEY (replica, seq)
);
CREATE INDEX IF NOT EXISTS audit_records_ts ON audit_records (ts);
CREATE INDEX IF NOT EXISTS audit_records_dag ON audit_records (dag_id, ts);
CREATE INDEX IF NOT EXISTS audit_records_run ON audit_records (run_id, ts);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    replica TEXT NOT NULL,
    n INTEGER NOT NULL,
    at REAL NOT NULL,
    heads TEXT NOT NULL,
    kid TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (replica, n)
);
""",
    ),
    Migration(
        2,
        "audit_records indexes by token id and by event (the console's lookups)",
        # jti: a live token's last use (its records since its issue); event: counts and
        # pages of one event over a window (tokens issued, denials), and, with dag_id in
        # the index, the request histogram read from the index alone
        """
CREATE INDEX IF NOT EXISTS audit_records_jti ON audit_records (jti, ts);
CREATE INDEX IF NOT EXISTS audit_records_event ON audit_records (event, ts, dag_id);
""",
    ),
)
register_domain(DOMAIN, MIGRATIONS)
#: The steps a reader needs: the tables. Later steps only add indexes, so a trail whose
#: newer steps wait for ``lockgate db upgrade`` is read as it is, only slower.
READ_STEPS = 1


def readable(db: Database) -> bool:
    """Whether ``db`` holds the shared trail's tables (the steps up to :data:`READ_STEPS`):
    all a reader needs (the search, the console, the alerts' follower), whatever later
    step is still pending. Writers (the shipper) still migrate to the newest step."""
    return not any(m.version <= READ_STEPS for m in pending(db, DOMAIN, MIGRATIONS))


_RECORD_COLUMNS = ("seq", *RECORD_FIELDS, "prev_hash", "hash")
SELECT_ROWS = f"SELECT replica, {', '.join(_RECORD_COLUMNS)}, stored_json FROM audit_records"  # noqa: S608
# stored_json: the row exactly as stored, as JSON text, only when a text value holds a NUL
# character (PostgreSQL text cannot; its columns then hold U+FFFD instead, for searching)
_SHIPPED_COLUMNS = ("replica", *_RECORD_COLUMNS, "shipped_at", "stored_json")
_INSERT_HEAD = f"INSERT INTO audit_records ({', '.join(_SHIPPED_COLUMNS)}) "
_CONFLICT = " ON CONFLICT (replica, seq) DO NOTHING"
# PostgreSQL column types of the shipped columns (TEXT unless named), for the array casts
_PG_TYPES = {
    "seq": "bigint",
    "ts": "double precision",
    "try_number": "bigint",
    "map_index": "bigint",
    "status": "bigint",
    "latency_ms": "double precision",
    "bytes_in": "bigint",
    "bytes_out": "bigint",
    "shipped_at": "double precision",
}
# column names and types are the constants above, never input
_PG_INSERT = (
    _INSERT_HEAD  # noqa: S608
    + "SELECT "
    + ", ".join(f"(e->>{i})::{_PG_TYPES.get(c, 'text')}" for i, c in enumerate(_SHIPPED_COLUMNS))
    + " FROM jsonb_array_elements(?::jsonb) AS e"
    + _CONFLICT
)
# Every head named by a checkpoint (seq > 0) whose row is missing or has another hash; the
# first one, in (replica, seq) order. The heads are the signed JSON itself, unnested by the
# database: PostgreSQL with jsonb, SQLite with json_each.
_UNMATCHED_HEAD = {
    "postgresql": """
SELECT h.key, (h.value->>0)::bigint, c.replica, c.n, r.hash
FROM audit_checkpoints c
CROSS JOIN LATERAL jsonb_each(c.heads::jsonb) AS h
LEFT JOIN audit_records r ON r.replica = h.key AND r.seq = (h.value->>0)::bigint
WHERE (h.value->>0)::bigint > 0 AND (r.hash IS NULL OR r.hash <> h.value->>1)
ORDER BY h.key, (h.value->>0)::bigint, c.replica, c.n
LIMIT 1""",
    "sqlite": """
SELECT h.key, json_extract(h.value, '$[0]'), c.replica, c.n, r.hash
FROM audit_checkpoints c, json_each(c.heads) AS h
LEFT JOIN audit_records r ON r.replica = h.key AND r.seq = json_extract(h.value, '$[0]')
WHERE json_extract(h.value, '$[0]') > 0
  AND (r.hash IS NULL OR r.hash <> json_extract(h.value, '$[1]'))
ORDER BY h.key, json_extract(h.value, '$[0]'), c.replica, c.n
LIMIT 1""",
}
# The newest record of each token (its jti) at or after its ``since``, other than its issue:
# one statement for every token (a query per token costs a round trip each), each an index
# probe of audit_records_jti. SQLite (tests, one process) asks token by token.
_LAST_USE = """
SELECT t.jti, r.ts, r.event
FROM jsonb_to_recordset(?::jsonb) AS t(jti text, since double precision)
CROSS JOIN LATERAL (
    SELECT ts, event FROM audit_records
    WHERE jti = t.jti AND ts >= t.since AND event <> 'token_issued'
    ORDER BY ts DESC, replica DESC, seq DESC LIMIT 1
) AS r"""
_LAST_USE_ONE = (
    "SELECT ts, event FROM audit_records WHERE jti = ? AND ts >= ? AND event <> 'token_issued' "
    "ORDER BY ts DESC, replica DESC, seq DESC LIMIT 1"
)
_ROWS_PER_INSERT = 30  # SQLite: bind parameters per statement stay below its limit
_PAGE = 5_000  # rows per read while verifying (memory stays flat on a long trail)

Heads = dict[str, tuple[int, str]]  # replica -> (seq, hash)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    replica: str
    n: int
    at: float
    heads: Heads
    kid: str
    signature: str  # hex

    def payload(self) -> bytes:
        return checkpoint_payload(self.replica, self.n, self.at, self.heads)

    @property
    def name(self) -> str:
        return f"checkpoint {self.n} of replica {self.replica}"


def checkpoint_payload(replica: str, n: int, at: float, heads: Heads) -> bytes:
    """The signed bytes: canonical JSON, so any verifier rebuilds them from the row."""
    signed = ["lockgate-audit-checkpoint", replica, n, at, _heads_json(heads)]
    return canonical_json(signed).encode()


def _heads_json(heads: Heads) -> dict[str, list[object]]:
    return {r: [s, h] for r, (s, h) in sorted(heads.items())}


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class SharedTrail:
    """Reads and writes of the shared tables (any :class:`~lockgate.store.Database`)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- shipping --------------------------------------------------------------------------
    def shipped_head(self, replica: str) -> tuple[int, str]:
        """(highest seq shipped for ``replica``, its hash); (0, GENESIS) when none."""
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT seq, hash FROM audit_records WHERE replica = ? ORDER BY seq DESC LIMIT 1",
                (replica,),
            ).fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def ship(self, replica: str, rows: Sequence[Sequence[Any]], shipped_at: float) -> None:
        """Insert ``rows`` of ``replica``'s chain (as stored, see
        :func:`lockgate.audit.chain.stored_after`) in one transaction; rows already there
        stay as they are (a re-shipped batch)."""
        table = [(replica, *_storable(r), shipped_at, _stored_json(r)) for r in rows]
        with self.db.transaction() as cur:
            if self.db.dialect == "postgresql":
                # one statement, the batch as one JSON array of rows: a long multi-row VALUES
                # costs the driver more to prepare than the server to insert (floats keep
                # their exact value through JSON: Python writes, PostgreSQL reads, both
                # shortest round-trip text)
                text = json.dumps(table, allow_nan=False, separators=(",", ":"))
                inserted = cur.execute(_PG_INSERT, (text,)).rowcount
            else:
                inserted = 0
                for start in range(0, len(table), _ROWS_PER_INSERT):
                    chunk = table[start : start + _ROWS_PER_INSERT]
                    sql = _insert_values(len(chunk))
                    inserted += cur.execute(sql, [v for row in chunk for v in row]).rowcount
            if inserted < len(rows):  # some were there: a re-shipped batch, or not ours
                self._same_rows(cur, replica, rows)

    def _same_rows(self, cur: Cursor, replica: str, rows: Sequence[Sequence[Any]]) -> None:
        """Raise ChainMismatch (rolling the batch back) unless the rows already stored under
        ``replica`` at these seqs are these very rows (same hash)."""
        ours = {int(r[0]): str(r[-1]) for r in rows}
        stored = cur.execute(
            "SELECT seq, hash FROM audit_records WHERE replica = ? AND seq >= ? AND seq <= ?",
            (replica, min(ours), max(ours)),
        ).fetchall()
        for seq, h in stored:
            if ours.get(int(seq), h) != h:
                raise ChainMismatch(
                    f"PostgreSQL holds seq {seq} of replica {replica!r} with another hash "
                    "than the local chain: is this replica_id used by another data_dir?"
                )

    def heads(self) -> Heads:
        """The last shipped (seq, hash) of every replica's chain."""
        with self.db.read() as cur:
            return self._heads(cur)

    def last_checkpoint(self, replica: str) -> Checkpoint | None:
        with self.db.read() as cur:
            row = cur.execute(
                "SELECT replica, n, at, heads, kid, signature FROM audit_checkpoints "
                "WHERE replica = ? ORDER BY n DESC LIMIT 1",
                (replica,),
            ).fetchone()
        return _checkpoint(row) if row else None

    def write_checkpoint(
        self, replica: str, key: Ed25519PrivateKey, at: float, *, at_least: int = 1
    ) -> Checkpoint:
        """Sign the heads of every chain as they are now; the next ``n`` of ``replica``
        (``at_least``: the replica's own count says it has written that many before)."""
        with self.db.transaction() as cur:
            heads = self._heads(cur)
            row = cur.execute(
                "SELECT max(n) FROM audit_checkpoints WHERE replica = ?", (replica,)
            ).fetchone()
            n = max(int(row[0] or 0) + 1 if row else 1, at_least)
            payload = checkpoint_payload(replica, n, at, heads)
            cp = Checkpoint(
                replica, n, at, heads, key_id(key.public_key()), key.sign(payload).hex()
            )
            cur.execute(
                "INSERT INTO audit_checkpoints (replica, n, at, heads, kid, signature) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (replica, n) DO NOTHING",
                (cp.replica, cp.n, cp.at, canonical_json(_heads_json(heads)), cp.kid, cp.signature),
            )
        return cp

    def _heads(self, cur: Cursor) -> Heads:
        rows = cur.execute(
            "SELECT r.replica, r.seq, r.hash FROM audit_records r JOIN "
            "(SELECT replica, max(seq) AS seq FROM audit_records GROUP BY replica) h "
            "ON r.replica = h.replica AND r.seq = h.seq"
        ).fetchall()
        return {str(r): (int(s), str(h)) for r, s, h in rows}

    # -- reading ---------------------------------------------------------------------------
    def search(
        self,
        *,
        dag: str | None = None,
        run: str | None = None,
        decision: str | None = None,
        event: str | None = None,
        resource: str | None = None,
        replica: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AuditRow]:
        """Newest ``limit`` rows of all replicas matching every filter, oldest first."""
        equal = {"dag_id": dag, "run_id": run, "decision": decision, "event": event,
                 "resource": resource, "replica": replica}  # fmt: skip
        clause, args = where(equal, since)
        sql = SELECT_ROWS + clause
        with self.db.read() as cur:
            rows = cur.execute(
                f"{sql} ORDER BY ts DESC, replica DESC, seq DESC LIMIT ?", (*args, int(limit))
            ).fetchall()
        return [trail_row(r) for r in reversed(rows)]

    def last_uses(self, tokens: Mapping[str, float]) -> dict[str, tuple[float, str]]:
        """Per token id (jti -> the time it was issued): (ts, event) of its newest record
        since then other than its ``token_issued``; tokens never used are left out."""
        # as the column holds it (a NUL stored as U+FFFD, see _storable)
        stored = {jti.replace("\x00", "\ufffd"): jti for jti in tokens}
        found: dict[str, tuple[float, str]] = {}
        if not tokens:
            return found
        with self.db.read() as cur:
            if self.db.dialect == "postgresql":
                wanted = [{"jti": s, "since": float(tokens[t])} for s, t in stored.items()]
                text = json.dumps(wanted, allow_nan=False)
                for jti, ts, event in cur.execute(_LAST_USE, (text,)).fetchall():
                    found[stored[str(jti)]] = (float(ts), str(event))
                return found
            for key, jti in stored.items():
                row = cur.execute(_LAST_USE_ONE, (key, float(tokens[jti]))).fetchone()
                if row is not None:
                    found[jti] = (float(row[0]), str(row[1]))
        return found

    def replicas(self) -> list[str]:
        with self.db.read() as cur:
            rows = cur.execute(
                "SELECT replica FROM audit_records GROUP BY replica "
                "UNION SELECT replica FROM audit_checkpoints GROUP BY replica"
            ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def _chain(self, replica: str) -> Iterator[AuditRow]:
        after = 0
        while True:
            with self.db.read() as cur:
                page = cur.execute(
                    f"{SELECT_ROWS} WHERE replica = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (replica, after, _PAGE),
                ).fetchall()
            for r in page:
                yield trail_row(r, checked=True)
            if len(page) < _PAGE:
                return
            after = int(page[-1][1])

    def _checkpoints(self) -> Iterator[Checkpoint]:
        """Every checkpoint, by replica and number, a page at a time."""
        after: tuple[str, int] = ("", 0)
        while True:
            with self.db.read() as cur:
                page = cur.execute(
                    "SELECT replica, n, at, heads, kid, signature FROM audit_checkpoints "
                    "WHERE replica > ? OR (replica = ? AND n > ?) ORDER BY replica, n LIMIT ?",
                    (after[0], after[0], after[1], _PAGE),
                ).fetchall()
            for r in page:
                yield _checkpoint(r)
            if len(page) < _PAGE:
                return
            after = (str(page[-1][0]), int(page[-1][1]))

    def _first_unmatched_head(self) -> tuple[str, int, str, int, bool] | None:
        """The first head some checkpoint names that the chains do not hold with that hash:
        (its replica, seq, the naming checkpoint's replica, its n, whether a row is there).
        One query (the database matches every named head to its row): memory stays flat
        however many checkpoints there are."""
        sql = _UNMATCHED_HEAD[self.db.dialect]
        with self.db.read() as cur:
            row = cur.execute(sql).fetchone()
        if row is None:
            return None
        head_replica, seq, by_replica, n, stored = row
        return str(head_replica), int(seq), str(by_replica), int(n), stored is not None

    # -- verify ----------------------------------------------------------------------------
    def verify(self, public_key: Ed25519PublicKey | None) -> VerifyResult:
        """Check every replica's chain and every checkpoint (see the module docstring).

        ``public_key`` None: signatures are not checked (the heads they name still are)."""
        kid = key_id(public_key) if public_key is not None else None
        expected_n: dict[str, int] = {}
        count = 0
        for cp in self._checkpoints():
            count += 1
            want = expected_n.get(cp.replica, 0) + 1
            if cp.n != want:
                return _broken(
                    cp.replica, 0, f"checkpoint {want} of replica {cp.replica} is missing"
                )
            expected_n[cp.replica] = cp.n
            if public_key is None:
                continue
            if cp.kid != kid:
                return _broken(
                    cp.replica, 0,
                    f"checkpoint {cp.n} is signed by key {cp.kid}, not the gateway's ({kid})",
                )  # fmt: skip
            try:
                public_key.verify(bytes.fromhex(cp.signature), cp.payload())
            except (InvalidSignature, ValueError):
                return _broken(cp.replica, 0, f"checkpoint {cp.n}: bad signature")
        checked = 0
        last: dict[str, int] = {}
        for replica in self.replicas():
            try:
                w = walk(self._chain(replica), {})
            except Relabelled as exc:
                problem = "stored_json is not the row its columns hold (row relabelled)"
                return _broken(replica, exc.seq, problem, checked, count)
            checked += w.checked
            last[replica] = w.last_seq
            if w.broken is not None:
                return _broken(replica, w.broken[0], w.broken[1], checked, count)
        unmatched = self._first_unmatched_head()
        if unmatched is not None:  # a chain rewritten or cut short after a checkpoint named it
            replica, seq, by_replica, n, stored = unmatched
            named = f"checkpoint {n} of replica {by_replica}"
            if stored:
                return _broken(
                    replica, seq, f"hash differs from {named} (chain rewritten)", checked, count
                )
            end = last.get(replica, 0)
            return _broken(
                replica, end + 1,
                f"truncated: {named} names seq {seq}, the shipped chain ends at {end}",
                checked, count,
            )  # fmt: skip
        return VerifyResult(True, checked, checkpoints=count)


def _broken(
    replica: str, seq: int, problem: str, checked: int = 0, checkpoints: int = 0
) -> VerifyResult:
    return VerifyResult(
        False, checked, seq or None, f"replica {replica}: {problem}", replica, checkpoints
    )


def _insert_values(rows: int) -> str:
    marks = f"({', '.join('?' * len(_SHIPPED_COLUMNS))})"
    return _INSERT_HEAD + "VALUES " + ", ".join([marks] * rows) + _CONFLICT


def _has_nul(r: Sequence[Any]) -> bool:
    return any(type(v) is str and "\x00" in v for v in r)


def _storable(r: Sequence[Any]) -> Sequence[Any]:
    if not _has_nul(r):
        return r
    return [v.replace("\x00", "\ufffd") if type(v) is str else v for v in r]


def _stored_json(r: Sequence[Any]) -> str | None:
    # ensure_ascii: a NUL becomes the six characters \u0000, which text can hold
    return json.dumps(list(r), allow_nan=False) if _has_nul(r) else None


class Relabelled(Exception):
    """A row's ``stored_json`` is not the row its columns hold (see :func:`_row`)."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


def trail_row(r: tuple[Any, ...], *, checked: bool = False) -> AuditRow:
    """The AuditRow of a selected row. ``stored_json`` is the row itself when a text value
    holds a NUL; ``checked``: raise Relabelled unless it is exactly that (a NUL in it, and
    the columns are it with U+FFFD for NUL), or search, which filters on the columns, could
    be shown other columns than the hashes vouch for."""
    stored = r[-1]
    columns = r[1:-1]
    if stored is None:
        row = row_from_columns(columns)
    else:
        original = json.loads(stored)
        if checked and (not _has_nul(original) or list(_storable(original)) != list(columns)):
            raise Relabelled(int(r[1]))
        row = row_from_columns(original)
    row.replica = str(r[0])
    return row


def _checkpoint(r: tuple[Any, ...]) -> Checkpoint:
    replica, n, at, heads_text, kid, signature = r
    heads = {str(k): (int(v[0]), str(v[1])) for k, v in json.loads(heads_text).items()}
    return Checkpoint(str(replica), int(n), float(at), heads, str(kid), str(signature))


def signing_key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(seed: bytes) -> Ed25519PublicKey:
    return signing_key(seed).public_key()


__all__ = [
    "DOMAIN",
    "MIGRATIONS",
    "READ_STEPS",
    "Checkpoint",
    "SharedTrail",
    "checkpoint_payload",
    "key_id",
    "public_key",
    "readable",
    "signing_key",
]
