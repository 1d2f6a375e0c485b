"""Audit: one tamper-evident record per decision.

Door: :class:`AuditLog` (write side, non-blocking, fail-closed), :class:`AuditRecord`,
:class:`AuditReader` (queries from any process), :func:`format_records` (CLI output).

Rooms: ``record`` (the record and its canonical hash form), ``chain`` (SQLite schema,
append, verify), ``log`` (writer thread and health), ``sinks`` (JSON-lines mirror),
``reader`` (queries), ``format`` (CLI rendering).
"""

from lockgate.audit.chain import VerifyResult
from lockgate.audit.format import format_records
from lockgate.audit.log import AuditLog
from lockgate.audit.reader import AuditReader
from lockgate.audit.record import EVENTS, AuditRecord, AuditRow

__all__ = [
    "EVENTS",
    "AuditLog",
    "AuditReader",
    "AuditRecord",
    "AuditRow",
    "VerifyResult",
    "format_records",
]
