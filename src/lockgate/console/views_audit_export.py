"""The audit explorer's exports: the records its filters match, newest first, as CSV or as
JSON lines (one record per line, as ``audit.jsonl`` holds them), streamed page by page
(chunked; a page is read in a thread) and capped at
:data:`~lockgate.console.views_audit_filters.EXPORT_CAP` records.

CSV cells that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return, also behind blanks a spreadsheet trims, or with the
full-width forms of those signs) get a leading ``'``. Records never hold a token (the
audit log redacts anything token-shaped before it is chained), so neither does an export.

At most :data:`MAX_EXPORTS` exports run at once (each may read a million records): the next
is answered 429 with a Retry-After until one ends. The event loop is the primary worker's
(the gateway's engines, token minting): each page is read AND encoded on the console's read
pool, one pool turn per page (the next page read with the current one's encoding), so the
loop only hands the bytes to the socket. An export whose client stops reading for
:data:`WRITE_SECONDS`, or that is still streaming after :data:`EXPORT_SECONDS`, is cut off
(the connection closed before the last chunk, so no client takes it for whole): a slow
reader cannot hold a slot for ever. ``HEAD`` answers the headers only (aiohttp would
otherwise stream the rows after them, read by a kept-alive client as its next answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator

from aiohttp import web

from lockgate import _log
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
#: seconds an export may stream in all (a whole million-record export takes well under a
#: minute here); past it the export is cut off and its slot freed
EXPORT_SECONDS = 600.0
#: seconds one chunk may wait on a client that does not read before the export is cut off
WRITE_SECONDS = 60.0
#: the CSV's columns: the chain position, a readable time, then every record field
CSV_COLUMNS = ("replica", "seq", "time_utc", *RECORD_FIELDS, "prev_hash", "hash")
_FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
#: what a spreadsheet may trim before it looks for a formula, and the full-width = + - @
#: some read as the plain ones
_TRIMMED = " \t\r\n\u00a0\u3000"
_FULL_WIDTH_LEAD = ("\uff1d", "\uff0b", "\uff0d", "\uff20")

log = _log.get("console.export")

Encode = Callable[[Iterable[AuditRow], bool], str]


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
    request: web.Request, suffix: str, content_type: str, encode: Encode
) -> web.StreamResponse:
    with request.app[EXPORT_SLOTS].take():
        return await _export_now(request, suffix, content_type, encode)


async def _export_now(
    request: web.Request, suffix: str, content_type: str, encode: Encode
) -> web.StreamResponse:
    try:
        q, _ = filters_of(request.rel_url.query)
    except BadFilter as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    # one reader for every page: on shared state, one connection pool for the whole export
    reader = context(request).audit_reader()
    try:
        try:  # the first page before any header: an unreachable trail is a 503, not a cut
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
    encode: Encode,
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
    if request.method == "HEAD":  # the headers only: bytes after them desync the connection
        await response.write_eof()
        return response
    deadline = asyncio.get_running_loop().time() + EXPORT_SECONDS
    sent, header = 0, True
    next_page: AuditPage | None = page
    while next_page is not None:
        rows = next_page.rows[: EXPORT_CAP - sent]
        sent += len(rows)
        older = next_page.older if sent < EXPORT_CAP else None
        # a failure reading the next page now cuts the stream short
        data, next_page = await _chunk(request, reader, q, rows, header, older, encode)
        header = False
        if not await _send(request, response, data, deadline):
            return response
    await response.write_eof()
    return response


async def _page(
    request: web.Request, reader: AuditReader, q: AuditQuery, older: str | None
) -> AuditPage:
    """A page read on the console's read pool (one page per turn: an export takes turns
    with the other pages' reads instead of holding a reader for its whole stream)."""
    return await run_read(request, reader.query, q, limit=EXPORT_PAGE, older=older)


async def _chunk(
    request: web.Request,
    reader: AuditReader,
    q: AuditQuery,
    rows: list[AuditRow],
    header: bool,
    older: str | None,
    encode: Encode,
) -> tuple[bytes, AuditPage | None]:
    """``rows`` encoded, and the page after them (None: the last was sent), in one turn on
    the read pool: a page's encoding holds the GIL 60-160 ms, never on the event loop."""

    def work() -> tuple[bytes, AuditPage | None]:
        data = encode(rows, header).encode("utf-8")
        after = reader.query(q, limit=EXPORT_PAGE, older=older) if older is not None else None
        return data, after

    return await run_read(request, work)


async def _send(
    request: web.Request, response: web.StreamResponse, data: bytes, deadline: float
) -> bool:
    """``data`` written to the client; False when the client took longer than
    :data:`WRITE_SECONDS` or the export passed its deadline: then the connection is closed
    before the last chunk (the client sees a cut answer, never a short one that looks whole)."""
    left = min(WRITE_SECONDS, deadline - asyncio.get_running_loop().time())
    try:
        if left <= 0:
            raise TimeoutError
        async with asyncio.timeout(left):
            await response.write(data)
        return True
    except TimeoutError:
        log.warning("audit export cut off: its client read too slowly or for too long")
        if request.transport is not None:
            request.transport.abort()
        return False


@requires("viewer")
async def export_csv(request: web.Request) -> web.StreamResponse:
    return await _export(request, "csv", "text/csv", csv_lines)


@requires("viewer")
async def export_json(request: web.Request) -> web.StreamResponse:
    return await _export(request, "jsonl", "application/x-ndjson", json_lines)


__all__ = [
    "CSV_COLUMNS",
    "EXPORT_SECONDS",
    "EXPORT_SLOTS",
    "MAX_EXPORTS",
    "WRITE_SECONDS",
    "ExportSlots",
    "csv_cell",
    "export_csv",
    "export_json",
]
