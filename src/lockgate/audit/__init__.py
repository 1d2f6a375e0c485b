"""Audit: one tamper-evident record per decision.

Door: :class:`AuditLog` (write side in a thread, non-blocking, fail-closed; ``write_ahead``
journals an allowed request's record before it is forwarded),
:class:`RemoteAuditLog` (same contract, writing done by ``python -m lockgate.audit.writer``),
:class:`AuditRecord`,
:class:`AuditReader` (queries from any process; :class:`AuditQuery` filters, a page is an
:class:`AuditPage`, a histogram a list of :class:`HistogramBucket`),
:func:`format_records` (CLI output),
:class:`AuditShipping` (with ``state: postgresql``: ship this replica's chain to the shared
trail; :func:`checkpoint_key` derives its checkpoint signing key from the master key).

Rooms: ``record`` (the record and its canonical hash form), ``chain`` (SQLite schema,
append, verify), ``door`` (what both front doors share: numbering, write-ahead, awaited
writes, drops), ``log`` (writer thread), ``health`` (when to refuse), ``sinks`` (JSON-lines
mirror), ``reader`` (queries), ``query`` (filters, pages, counts, histograms in SQL),
``format`` (CLI rendering), ``wire`` (sender/writer framing), ``remote`` (sender side),
``writer_process`` (starts and restarts the writer process), ``writer`` (the writer
process), ``journal`` (write-ahead journal, marks and replay after a crash), ``shipping``
(what to ship, the checkpoint key, the lag), ``shipper`` (copies the local chain to
PostgreSQL, signs checkpoints), ``shared`` (the shared tables: schema, search, verify
across replicas).
"""

from lockgate.audit.chain import VerifyResult
from lockgate.audit.format import format_records
from lockgate.audit.log import AuditLog
from lockgate.audit.query import AuditPage, AuditQuery, HistogramBucket
from lockgate.audit.reader import AuditReader
from lockgate.audit.record import EVENTS, AuditRecord, AuditRow
from lockgate.audit.remote import RemoteAuditLog
from lockgate.audit.shipping import AuditShipping, ShipLag, checkpoint_key

__all__ = [
    "EVENTS",
    "AuditLog",
    "AuditPage",
    "AuditQuery",
    "AuditReader",
    "AuditRecord",
    "AuditRow",
    "AuditShipping",
    "HistogramBucket",
    "RemoteAuditLog",
    "ShipLag",
    "VerifyResult",
    "checkpoint_key",
    "format_records",
]
