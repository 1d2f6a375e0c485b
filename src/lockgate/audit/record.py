"""The audit record and its canonical, hashable form.

One :class:`AuditRecord` per decision. The record is plain data; :func:`sanitize` scrubs it
(JWT-shaped strings anywhere, secret-ish keys in ``detail``) and :func:`canonical` turns it
into the exact bytes that go into the hash chain::

    hash = sha256(prev_hash || canonical_json([seq, event, ts, deployment, ..., detail]))

The array holds ``seq`` then every field in :data:`RECORD_FIELDS` (declaration) order; an
array rather than an object because it encodes twice as fast on the writer's hot path.
Canonical JSON is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
so the same row read back from SQLite re-hashes to the same value (floats round-trip
exactly through REAL; ``detail`` is stored as its own canonical JSON, keys sorted). An
external verifier needs only this paragraph, sha256 and the JSON-lines file.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from operator import attrgetter
from typing import Any

from lockgate._log import _JWT_RE, REDACTED, redact

#: Every event an audit record may carry.
EVENTS = frozenset(
    {
        "token_issued",
        # an allowed request, written ahead (journal) before it is forwarded; its outcome
        # (status, bytes, latency) follows as "allowed" or "upstream_error", same "ref"
        "admitted",
        "allowed",
        "denied",
        # policy allowed it but a quota of the policy files refused it (decision deny, reason
        # throttled, rule the allowing rule; detail: limit (the quota id), kind, retry_after)
        "throttled",
        # a CQL/PostgreSQL session the gateway ended from outside: its token was revoked or
        # its DAG blocked (decision deny, action connect, reason token_revoked)
        "session_ended",
        "upstream_error",
        "auth_failed",
        "credential_rotated",
        "credential_set",
        # lockgate keys rotate / keys retire (object: the kid; detail: alg and times)
        "key_rotated",
        "key_retired",
        "token_revoked",
        "mint_blocked",  # the kill switch: lockgate token revoke --block
        "mint_unblocked",
        "policy_reloaded",
        # SIGHUP: reason "applied" (detail: resources added/removed/changed), "refused"
        # (sections that need a restart), "invalid_file" or "failed" (an engine could not
        # take it); nothing is applied unless applied
        "config_reloaded",
        # the web console: a person signed in (detail: name, role, via "oidc" | "link"),
        # was refused (reason; never a code or token) or signed out; principal
        # console:<subject>
        "console_signed_in",
        "console_sign_in_failed",
        "console_signed_out",
        # a one-time admin link was made (object: the subject its session will have,
        # link:<8 hex>; detail: ttl; never the link itself)
        "console_link_created",
    }
)
DECISIONS = frozenset({"allow", "deny", "error"})  # error: the gateway's own fault
#: prev_hash of the first row.
GENESIS = "0" * 64
#: A text field longer than this (an object named by a 1 MB quoted CQL identifier, say) keeps
#: its start and a digest of the whole: records, exports and alerts stay small, and two long
#: values still differ.
MAX_FIELD_CHARS = 2048


def capped(value: str) -> str:
    """``value`` cut to :data:`MAX_FIELD_CHARS`: its first characters and a digest of it."""
    digest = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]
    return f"{value[: MAX_FIELD_CHARS - 40]}...(sha256:{digest})"


#: A detail dict larger than this (as JSON) is replaced by a marker: records stay small.
MAX_DETAIL_BYTES = 4096


@dataclass(slots=True)
class AuditRecord:
    """One decision. Only ``event`` is required; ``ts`` is set on write when 0.

    ``jti`` (the token id) is fine to record; the token itself never is.
    """

    event: str
    ts: float = 0.0
    deployment: str | None = None
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    try_number: int | None = None
    map_index: int | None = None
    principal: str | None = None
    resource: str | None = None
    action: str | None = None
    object: str | None = None
    decision: str | None = None
    rule: str | None = None
    reason: str | None = None
    status: int | None = None
    latency_ms: float | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    jti: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RECORD_FIELDS}


@dataclass(slots=True)
class AuditRow(AuditRecord):
    """A stored record: the record plus its place in the chain."""

    seq: int = 0
    prev_hash: str = ""
    hash: str = ""
    # whose chain the row is in, when read from the shared trail (several replicas' chains)
    replica: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in RECORD_FIELDS}
        if self.replica is not None:
            d["replica"] = self.replica
        d["seq"] = self.seq
        d["prev_hash"] = self.prev_hash
        d["hash"] = self.hash
        return d


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(AuditRecord))
#: A record's field values in RECORD_FIELDS order: what the queues, the journal and the wire
#: carry (one type per field, so only the record itself can say which).
Values = tuple[Any, ...]
#: All field values of a record, in RECORD_FIELDS order (C speed, no per-field getattr).
values: Callable[[AuditRecord], Values] = attrgetter(*RECORD_FIELDS)
_STR_FIELDS = tuple(
    f.name for f in fields(AuditRecord) if f.name not in {"event", "detail"} and "str" in f.type
)
_INT_FIELDS = ("try_number", "map_index", "status", "bytes_in", "bytes_out")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # what SQLite INTEGER can bind


def sanitize(rec: AuditRecord, now: float) -> AuditRecord:
    """Make ``rec`` ready to store, in place: ts set, types normalised, secrets redacted.

    The audit log owns a record once it is emitted. Code should never hand a secret to the
    audit log; redacting JWT-shaped strings and secret-ish ``detail`` keys is the second
    line of defence. A detail that cannot be stored (no JSON for it) is replaced by one naming
    the problem, and the record keeps who did what: whoever can shape a detail must not be
    able to erase the rest of the record. A record that still cannot be normalised is
    replaced by a minimal one: one bad record must never block the writer (and so fail the
    gateway closed for good).
    """
    try:
        return _sanitize(rec, now)
    except Exception as exc:
        failure = {"error": type(exc).__name__, "detail_dropped": True}
    try:
        rec.detail = {}
        rec = _sanitize(rec, now)
        rec.detail = failure
        return rec
    except Exception as exc:
        event = rec.event if isinstance(rec.event, str) and rec.event in EVENTS else "allowed"
        return AuditRecord(
            event=event,
            ts=now,
            reason="audit record could not be normalised",
            detail={"error": type(exc).__name__},
        )


def _sanitize(rec: AuditRecord, now: float) -> AuditRecord:
    ts = rec.ts
    if not ts:
        rec.ts = now
    elif type(ts) is not float or not math.isfinite(ts):
        ts = float(ts)
        rec.ts = ts if math.isfinite(ts) else now
    for name in _STR_FIELDS:
        v = getattr(rec, name)
        if v is None:
            continue
        if type(v) is not str:
            v = str(v)
            setattr(rec, name, v)
        if not v.isascii():  # lone surrogates cannot be stored or hashed as UTF-8
            v = v.encode("utf-8", "replace").decode("utf-8")
            setattr(rec, name, v)
        if "eyJ" in v:  # cheap pre-check before the regex: the hot path is usually clean
            v = _JWT_RE.sub(REDACTED, v)
            setattr(rec, name, v)
        if len(v) > MAX_FIELD_CHARS:
            setattr(rec, name, capped(v))
    for name in _INT_FIELDS:
        v = getattr(rec, name)
        if v is not None and (type(v) is not int or not _INT64_MIN <= v <= _INT64_MAX):
            v = int(v)
            setattr(rec, name, v if _INT64_MIN <= v <= _INT64_MAX else None)
    lat = rec.latency_ms
    if lat is not None and (type(lat) is not float or not math.isfinite(lat)):
        lat = float(lat)
        rec.latency_ms = lat if math.isfinite(lat) else None  # SQLite stores NaN as NULL
    detail = rec.detail
    if detail:
        flat = _flat_detail(detail) if type(detail) is dict else None
        if flat is not None:
            rec.detail = flat
            return rec
        if not isinstance(detail, dict):
            detail = {"detail": detail}
        # through JSON and back: the stored detail is plain JSON and re-hashes identically
        text = json.dumps(redact(dict(detail)), default=str, ensure_ascii=False)
        # NaN and Infinity are no JSON: stored as null, so strict readers can read the trail.
        detail = json.loads(text.encode("utf-8", "replace"), parse_constant=_no_constant)
        if len(canonical_json(detail)) > MAX_DETAIL_BYTES:
            detail = {"truncated": True}
        rec.detail = detail
    elif type(detail) is not dict:
        rec.detail = {}
    return rec


def _no_constant(_name: str) -> None:
    return None


_SECRET_KEY: dict[str, bool] = {}  # detail key -> redact() withholds its value (a few keys)


def _flat_detail(detail: dict[Any, Any]) -> dict[str, Any] | None:
    """What the JSON round trip below makes of a flat ``detail`` (str keys; str, int, bool or
    None values, short enough), without the round trip; None for any other detail.

    Most details are flat (``{"ref": ...}`` on every outcome record, the Cosmos operation
    names): this is a fifth of the round trip's cost on the data path. Same rules, same
    result: secret-ish keys withheld, JWT-shaped strings redacted, lone surrogates replaced."""
    out: dict[str, Any] = {}
    size = 2
    for k, v in detail.items():
        if type(k) is not str:
            return None
        secret = _SECRET_KEY.get(k)
        if secret is None:
            secret = redact(None, k) == REDACTED
            if len(_SECRET_KEY) < 1024:
                _SECRET_KEY[k] = secret
        kind = type(v)
        if secret:
            v = REDACTED
        elif kind is str:
            if "eyJ" in v:
                v = _JWT_RE.sub(REDACTED, v)
            if not v.isascii():
                v = v.encode("utf-8", "replace").decode("utf-8")
        elif not (kind is int or kind is bool or v is None):
            return None
        if not k.isascii():
            k = k.encode("utf-8", "replace").decode("utf-8")
        # at most 6 characters per character (\u00XX), quotes, colon and comma
        size += 6 * (len(k) + len(v if type(v) is str else str(v))) + 6
        out[k] = v
    return out if size <= MAX_DETAIL_BYTES else None


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# The C encoder behind _CANONICAL, built once: JSONEncoder.encode builds it again on every
# call, a third of the cost of hashing a record. Same output (sorted keys, compact, UTF-8 as
# is, NaN as NaN, TypeError for what JSON cannot hold); no circular-reference markers (shared
# by threads; sanitised values hold no cycle: a detail is flat or went through JSON).
_encode: Callable[[Any, int], Any] = (
    c_make_encoder(None, _CANONICAL.default, c_encode_basestring, None, ":", ",", True, False, True)
    if c_make_encoder is not None and c_encode_basestring is not None
    else lambda value, _level: (_CANONICAL.encode(value),)
)


def canonical_json(value: Any) -> str:
    return "".join(_encode(value, 0))


def hash_values(prev_hash: str, vals: tuple[Any, ...], seq: int) -> str:
    """sha256(prev_hash || canonical JSON of [seq, *values in RECORD_FIELDS order]), hex."""
    return canonical_row(prev_hash, vals, seq)[1]


def canonical_row(
    prev_hash: str, vals: tuple[Any, ...], seq: int, line: str | None = None
) -> tuple[str, str]:
    """(the ``detail`` column's canonical JSON, the row's hash), with one encoding of each
    value: the hashed text is the JSON array ``[seq, *vals]``, whose last item is that very
    detail text (a JSON array is its items' texts joined by commas, in brackets).

    ``line`` is the canonical JSON of ``[another_seq, *vals]`` when the caller has it (the
    record's journal line): the same text but for the number in front, so only the detail
    is encoded again."""
    detail_text = "".join(_encode(vals[-1], 0))
    if line is None:
        head = "".join(_encode([seq, *vals[:-1]], 0))  # "[seq,...]": the detail before "]"
        text = f"{head[:-1]},{detail_text}]"
    else:
        text = f"[{seq}{line[line.index(',') :]}"
    h = hashlib.sha256(prev_hash.encode("ascii"))
    h.update(text.encode())
    return detail_text, h.hexdigest()


def chain_hash(prev_hash: str, rec: AuditRecord, seq: int) -> str:
    return hash_values(prev_hash, values(rec), seq)
