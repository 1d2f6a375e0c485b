"""The audit exports' streaming: each page encoded on the console's read pool (never on the
event loop the gateway shares), ``HEAD`` answered with the headers only, and an export cut
off when its client stops reading or past its deadline (its slot freed for the next)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lockgate.audit import AuditRecord, AuditRow
from lockgate.console import views_audit, views_audit_export
from lockgate.console.views_audit_export import CSV_COLUMNS, EXPORT_SLOTS, ExportSlots
from tests.console._views import Served, serving, trail_context, write_trail

T0 = 1_767_225_600.0


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    db = tmp_path / "audit.db"
    records = [
        AuditRecord(event="allowed", ts=T0 + i, dag_id="etl", resource="orders",
                    object=f"/orders/{i}", decision="allow")
        for i in range(40)
    ]  # fmt: skip
    write_trail(db, records)
    return db


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Path], Any]]:
    """``await serve(db)``: (Served, the console app's export slots)."""
    async with serving() as start:

        async def served(db: Path) -> tuple[Served, ExportSlots]:
            apps: list[web.Application] = []

            def add_routes(app: web.Application) -> None:
                views_audit.add_routes(app)
                apps.append(app)

            return await start(trail_context(db), add_routes), apps[0][EXPORT_SLOTS]

        yield served


async def test_each_page_is_encoded_on_the_read_pool_not_the_event_loop(
    trail: Path, serve: Callable[[Path], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = views_audit_export.csv_lines

    def spying(rows: Iterable[AuditRow], header: bool) -> str:
        threads.append(threading.current_thread().name)
        return real(rows, header)

    monkeypatch.setattr(views_audit_export, "csv_lines", spying)
    monkeypatch.setattr(views_audit_export, "EXPORT_PAGE", 7)  # several pages
    client, slots = await serve(trail)
    status, body, _ = await client.get("/console/audit/export.csv")
    assert status == 200
    lines = body.splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS) and len(lines) == 41
    assert [line.split(",")[1] for line in lines[1:]] == [str(s) for s in range(40, 0, -1)]
    assert len(threads) == 6 and all(t.startswith("console-read") for t in threads)
    assert slots.running == 0


async def test_head_answers_the_headers_only_and_the_connection_stays_sound(
    trail: Path, serve: Callable[[Path], Any]
) -> None:
    client, slots = await serve(trail)
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    try:
        ask = "{} /console/audit/export.csv HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(ask.format("HEAD").encode() + ask.format("GET").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/csv" in head
        # the next bytes are the GET's answer, not rows streamed after the HEAD
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        body = await reader.readuntil(b"\r\n0\r\n\r\n")  # the GET's rows, to the last chunk
        assert b"/orders/39" in body and b"/orders/0" in body
    finally:
        writer.close()
    for _ in range(50):
        if slots.running == 0:
            break
        await asyncio.sleep(0.02)
    assert slots.running == 0


async def test_an_export_past_its_deadline_is_cut_off_and_frees_its_slot(
    trail: Path, serve: Callable[[Path], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views_audit_export, "EXPORT_SECONDS", 0.0)
    client, slots = await serve(trail)
    with pytest.raises(aiohttp.ClientPayloadError):  # cut: never a short answer that looks whole
        await client.get("/console/audit/export.json")
    for _ in range(50):
        if slots.running == 0:
            break
        await asyncio.sleep(0.02)
    assert slots.running == 0


async def test_a_client_that_stops_reading_is_cut_off(
    trail: Path,
    serve: Callable[[Path], Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A slow reader cannot hold one of the few export slots for ever."""
    monkeypatch.setattr(views_audit_export, "WRITE_SECONDS", 0.3)
    monkeypatch.setattr(views_audit_export, "EXPORT_PAGE", 1)
    big = "x" * (16 << 20)  # more than the socket buffers hold

    def bulky(rows: Iterable[AuditRow], header: bool) -> str:
        return big

    monkeypatch.setattr(views_audit_export, "csv_lines", bulky)
    client, slots = await serve(trail)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(b"GET /console/audit/export.csv HTTP/1.1\r\nHost: x\r\n\r\n")
        with caplog.at_level(logging.WARNING, logger="lockgate.console.export"):
            for _ in range(200):  # reads nothing meanwhile
                if slots.running == 0 and "cut off" in caplog.text:
                    break
                await asyncio.sleep(0.05)
        assert slots.running == 0 and "cut off" in caplog.text
        received = b""
        try:
            while chunk := await reader.read(1 << 20):
                received += chunk
        except ConnectionError:
            pass
        assert received.startswith(b"HTTP/1.1 200")
        assert not received.endswith(b"0\r\n\r\n")  # no last chunk: the client sees a cut
        assert len(received) < 40 * len(big)
    finally:
        writer.close()
