"""PostgreSQL away, then back: credentials and signing keys keep being served from memory
without a request waiting on the database, and both catch up by themselves (no restart)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from lockgate.config import LockgateConfig
from lockgate.credentials import CredentialBroker, CredentialStore
from lockgate.errors import StoreUnavailable
from lockgate.identity import KeyStore
from lockgate.store import PostgresDatabase
from tests.pgserver.fixtures import PgServerFactory
from tests.pgserver.state import shared_state_settings

T = TypeVar("T")
CONFIG = LockgateConfig.model_validate(
    {"credentials": [{"name": "orders-key", "type": "static", "overlap": 60}]}
)


def _retry(write: Callable[[], T], timeout: float = 10.0) -> T:
    """A write once the database takes writes again (the pool reconnects on its own)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return write()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.slow  # a server paused and resumed: several seconds
async def test_memory_serves_while_postgres_is_away_then_catches_up(
    pg_server_factory: PgServerFactory, tmp_path: Path
) -> None:
    server = pg_server_factory()
    settings = shared_state_settings(
        server, tmp_path / "pg", connect_timeout=1, catch_up_interval=0.3
    )
    key = os.urandom(32)
    writer_db = PostgresDatabase(settings, replica_id="writer")
    reader_db = PostgresDatabase(settings, replica_id="reader")
    reader_db.start_watching()
    try:
        writer = CredentialStore(writer_db, key)
        writer.set("orders-key", "v1")
        writer_keys = KeyStore(writer_db, master_key=key, activation_delay=0.5)
        reader_keys = KeyStore(reader_db, master_key=key)
        broker = CredentialBroker(CONFIG, CredentialStore(reader_db, key))
        secret = await broker.upstream_secret("orders-key")
        assert secret is not None and secret.value == "v1"
        kid = reader_keys.current().kid

        await asyncio.to_thread(server.pause)
        away = time.monotonic()
        while time.monotonic() - away < 1.5:
            started = time.monotonic()
            secret = await broker.upstream_secret("orders-key")
            assert secret is not None and secret.value == "v1"
            assert reader_keys.public_key(kid) is not None and reader_keys.current().kid == kid
            assert reader_keys.maybe_reload(0) is False
            assert time.monotonic() - started < 0.05  # nothing waited on the database
            await broker.poll()  # the server's tick: fails quietly, memory stays
            await asyncio.sleep(0.05)
        assert reader_db.stale_for() > 1.0

        await asyncio.to_thread(server.resume)
        await asyncio.to_thread(_retry, lambda: writer.rotate("orders-key", "v2"))
        new_kid = (await asyncio.to_thread(_retry, lambda: writer_keys.rotate(600))).kid
        deadline = time.monotonic() + 5
        while True:
            await broker.poll()
            secret = await broker.upstream_secret("orders-key")
            assert secret is not None
            if secret.value == "v2" and reader_keys.public_key(new_kid) is not None:
                break
            assert time.monotonic() < deadline, "no catch-up after PostgreSQL came back"
            await asyncio.sleep(0.05)
        assert reader_db.stale_for() < 1.0
        await broker.close()
    finally:
        reader_db.close()
        writer_db.close()
