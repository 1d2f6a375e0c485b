"""The audit explorer's exports: the records its filters match, newest first, as CSV or as
JSON lines (one record per line, as ``audit.jsonl`` holds them), streamed page by page
(chunked; a page is read in a thread) and capped at
:data:`~lockgate.console.views_audit_filters.EXPORT_CAP` records.

CSV cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return, also behind blanks a spreadsheet trims, or with the
full-width forms of those signs) get a leading ``'``. Records never hold a token (the
audit log redacts anything token-shaped before it is chained), so neither does an export.

At most :data:`MAX_EXPORTS` exports run at once (each may read a million records in worker
threads, the threads the primary worker mints tokens with): the next is answered 429 with a
Retry-After until one ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator

from aiohttp import web

from lockgate.audit import AuditPage, AuditQuery, AuditReader, AuditRow
from lockgate.audit.record import RECORD_FIELDS, canonical_json
from lockgate.audit.sinks import encode_line
from lockgate.console.reads import run_read
from lockgate.console.views_audit_filters import EXPORT_CAP, BadFilter, filters_of, utc
from lockgate.console.web import context, requires
from lockgate.errors import StoreUnavailable

#: records read per round trip while exporting
EXPORT_PAGE = 5_000
#: exports streaming at once, across every signed-in person
MAX_EXPORTS = 2
#: what a refused export is told to wait (seconds)
RETRY_AFTER = 30
#: the CSV's columns: the chain position, a readable time, then every record field
CSV_COLUMNS = ("replica", "seq", "time_utc", *RECORD_FIELDS, "prev_hash", "hash")
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
#: what a spreadsheet may trim before it looks for a formula, and the full-width = + - @
#: some read as the plain ones
_TRIMMED = " \t\r\n\u00a0\u3000"
_FULL_WIDTH_LEAD = ("\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: object) -> str:
    """``value`` as a CSV cell no spreadsheet runs as a formula."""
    if value is None:
        return ""
    if isinstance(value, dict):
        value = canonical_json(value)
    text = str(value)
    lead = text.lstrip(_TRIMMED)
    formula = text.startswith(_FORMULA_LEAD) or lead.startswith(_FORMULA_LEAD + _FULL_WIDTH_LEAD)
    return "'" + text if formula else text


def csv_lines(rows: Iterable[AuditRow], header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for row in rows:
        cells: dict[str, object] = {**row.to_dict(), "time_utc": utc(row.ts) + "Z"}
        writer.writerow([csv_cell(cells.get(name)) for name in CSV_COLUMNS])
    return out.getvalue()


def json_lines(rows: Iterable[AuditRow], header: bool) -> str:
    return "".join(encode_line(row.to_dict()) + "\n" for row in rows)


class ExportSlots:
    """The exports streaming now (one per app): :meth:`take` or 429."""

    def __init__(self, size: int = MAX_EXPORTS) -> None:
        self.size = size
        self.running = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[None]:
        if self.running >= self.size:
            raise web.HTTPTooManyRequests(
                text=f"{self.size} exports are running; try again when one ends",
                headers={"Retry-After": str(RETRY_AFTER)},
            )
        self.running += 1  # one event loop: no lock needed between check and count
        try:
            yield
        finally:
            self.running -= 1


EXPORT_SLOTS: web.AppKey[ExportSlots] = web.AppKey("lockgate_console_exports", ExportSlots)


async def _export(
    request: web.Request,
    suffix: str,
    content_type: str,
    encode: Callable[[Iterable[AuditRow], bool], str],
) -> web.StreamResponse:
    with request.app[EXPORT_SLOTS].take():
        return await _export_now(request, suffix, content_type, encode)


async def _export_now(
    request: web.Request,
    suffix: str,
    content_type: str,
    encode: Callable[[Iterable[AuditRow], bool], str],
) -> web.StreamResponse:
    try:
        q, _ = filters_of(request.rel_url.query)
    except BadFilter as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    # one reader for every page: on shared state, one connection pool for the whole export
    reader = context(request).audit_reader()
    try:
        try:
            first = await _page(request, reader, q, None)
        except StoreUnavailable as exc:
            raise web.HTTPServiceUnavailable(text=f"the trail is unreachable: {exc}") from None
        return await _stream(request, suffix, content_type, encode, reader, q, first)
    finally:
        await asyncio.to_thread(reader.close_shared)


async def _stream(
    request: web.Request,
    suffix: str,
    content_type: str,
    encode: Callable[[Iterable[AuditRow], bool], str],
    reader: AuditReader,
    q: AuditQuery,
    page: AuditPage,
) -> web.StreamResponse:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    response = web.StreamResponse(
        headers={
            "Content-Type": f"{content_type}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="lockgate-audit-{stamp}.{suffix}"',
            "X-Lockgate-Export-Cap": str(EXPORT_CAP),
            "Cache-Control": "no-store",
        }
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    sent, header = 0, True
    while True:
        rows = page.rows[: EXPORT_CAP - sent]
        await response.write(encode(rows, header).encode("utf-8"))
        sent, header = sent + len(rows), False
        if page.older is None or sent >= EXPORT_CAP:
            break
        page = await _page(request, reader, q, page.older)  # a failure now cuts the stream short
    await response.write_eof()
    return response


async def _page(
    request: web.Request, reader: AuditReader, q: AuditQuery, older: str | None
) -> AuditPage:
    """The next page, read on the console's read pool (one page per turn: an export takes
    turns with the other pages' reads instead of holding a reader for its whole stream)."""
    return await run_read(request, reader.query, q, limit=EXPORT_PAGE, older=older)


@requires("viewer")
async def export_csv(request: web.Request) -> web.StreamResponse:
    return await _export(request, "csv", "text/csv", csv_lines)


@requires("viewer")
async def export_json(request: web.Request) -> web.StreamResponse:
    return await _export(request, "jsonl", "application/x-ndjson", json_lines)


__all__ = [
    "CSV_COLUMNS",
    "EXPORT_SLOTS",
    "MAX_EXPORTS",
    "ExportSlots",
    "csv_cell",
    "export_csv",
    "export_json",
]
