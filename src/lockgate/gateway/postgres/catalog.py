"""Which schemas hold which relation names upstream, read once and shared between sessions.

The classifier resolves an unqualified name (``SELECT * FROM orders``) as the server would:
through the session's ``search_path``, to the first schema that holds a relation of that
name. For that it needs the upstream's ``pg_class``:
:class:`~.relation_catalog.RelationCatalog`. Each new session needs one before its first
statement, so :class:`RelationCatalogs` keeps one per resource for :data:`FRESH_FOR`
seconds and shares it: a burst of logins (an Airflow DAG run starting forty tasks) runs the
catalog query once, not forty times; logins that arrive while it runs wait for its answer
(should it fail, each reads on its own link).

The query runs on the session's own freshly logged-in upstream link, as a simple query,
before the client gets ``ReadyForQuery`` (so the link is idle and its answer cannot mix with
the client's traffic). Rows are read with the codec; an ``ErrorResponse`` is raised as
:class:`CatalogUnavailable` and the login refused (without the catalog nothing could be
placed).

Freshness: a relation created by a session is visible to that session through the flow's
own tracking. After any DDL through the gateway (a ``CREATE``/``DROP``/``ALTER``/``IMPORT``
command tag) the session invalidates the shared catalog, so the next login reads it anew.
Open sessions adopt the newest shared catalog at their next statement; when it is older
than :data:`FRESH_FOR` seconds, that statement also starts a background read on a
connection of its own (:meth:`RelationCatalogs.refresh_soon`, at most one per resource per
period), so a relation created outside the gateway reaches open sessions too, within a few
seconds. A resource whose config changes is read again at its next login. A statement whose
placing rests on facts others may have changed since (``Judged.catalog_sensitive``: a name
resolved past an existing schema, a view expanded) can have the catalog read on demand by
a read that starts after it asks (:meth:`RelationCatalogs.read_now`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass

from lockgate import _log
from lockgate.config import PostgresResource
from lockgate.errors import UpstreamUnavailable
from lockgate.gateway.engine import Clock, SecretCache

from . import codec, upstream
from .relation_catalog import RelationCatalog

log = _log.get("gateway.postgres")

#: Seconds a resource's relation catalog is shared before the next login reads it again.
FRESH_FOR = 5.0
#: The background read's own upstream login (names come back as UTF-8).
_CATALOG_STARTUP = {"client_encoding": "UTF8", "application_name": "lockgate-catalog"}
_MAX_ANSWER_BYTES = 1 << 30


class CatalogUnavailable(Exception):
    """The upstream did not answer the catalog query; the message is the server's."""


@dataclass(frozen=True, slots=True)
class _Entry:
    catalog: RelationCatalog
    read_at: float
    generation: int
    number: int = 0  # of the read_now read that stored it (0: any other read)


class RelationCatalogs:
    """One :class:`RelationCatalog` per resource, shared while fresh (see module doc)."""

    def __init__(self, clock: Clock, fresh_for: float = FRESH_FOR) -> None:
        self._clock = clock
        self.fresh_for = fresh_for
        self._entries: dict[str, _Entry] = {}
        # bumped by invalidate(): a read that started before a config change stores nothing
        self._generations: dict[str, int] = {}
        # the read under way per resource (its generation): logins meanwhile wait for it
        self._reads: dict[str, tuple[int, asyncio.Future[RelationCatalog]]] = {}
        # background reads for open sessions (refresh_soon), and when one may start next
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._next_refresh: dict[str, float] = {}
        # reads on demand (read_now), numbered in the order they start
        self._now_reads: dict[str, tuple[int, asyncio.Task[None]]] = {}
        self._reads_started = 0

    def cached(self, resource: str) -> RelationCatalog | None:
        """The resource's catalog if it is fresh, else None."""
        entry = self._entries.get(resource)
        if entry is None or self._clock() - entry.read_at > self.fresh_for:
            return None
        if entry.generation != self._generations.get(resource, 0):
            return None
        return entry.catalog

    def refresh_soon(self, resource: PostgresResource, secrets: SecretCache) -> None:
        """Read ``resource``'s catalog again in the background, on a connection of its own,
        unless it is fresh or being read; sessions adopt it at their next statement. At most
        one attempt per :data:`FRESH_FOR` seconds (an unreachable server is not hammered)."""
        name, now = resource.name, self._clock()
        if name in self._refreshing or name in self._reads or self.cached(name) is not None:
            return
        if now < self._next_refresh.get(name, 0.0):
            return
        self._next_refresh[name] = now + self.fresh_for
        task = asyncio.get_running_loop().create_task(self._refresh(resource, secrets))
        self._refreshing[name] = task
        task.add_done_callback(lambda _task: self._refreshing.pop(name, None))

    async def read_now(
        self, resource: PostgresResource, secrets: SecretCache
    ) -> RelationCatalog | None:
        """The catalog as a read that starts after this call finds it (None: it failed).

        For a statement whose placing rests on facts others may have changed since the
        last read (:attr:`~.classified.Classified.catalog_sensitive`): a read that started
        before the caller asked may predate the change, so it is waited out and a new one
        joined. Callers that arrive together share one read (a connection of its own).
        """
        name = resource.name
        asked = self._reads_started
        while True:
            under_way = self._now_reads.get(name)
            if under_way is None:
                self._reads_started += 1
                read = self._refresh(resource, secrets, self._reads_started)
                task = asyncio.get_running_loop().create_task(read)
                under_way = self._now_reads[name] = (self._reads_started, task)
                task.add_done_callback(functools.partial(self._forget, name, under_way))
            number, task = under_way
            await asyncio.shield(task)
            if number > asked:
                entry = self._entries.get(name)
                return entry.catalog if entry is not None and entry.number == number else None

    def age(self, resource: str) -> float | None:
        """Seconds since the resource's newest catalog was read (None: none is kept)."""
        entry = self._entries.get(resource)
        return None if entry is None else self._clock() - entry.read_at

    def _forget(
        self, name: str, entry: tuple[int, asyncio.Task[None]], _done: asyncio.Task[None]
    ) -> None:
        if self._now_reads.get(name) is entry:
            del self._now_reads[name]

    async def _refresh(
        self, resource: PostgresResource, secrets: SecretCache, number: int = 0
    ) -> None:
        name = resource.name
        generation = self._generations.get(name, 0)
        try:
            async with asyncio.timeout(resource.connect_timeout + resource.handshake_timeout):
                link = await upstream.connect(resource, secrets, _CATALOG_STARTUP)
                try:
                    messages = codec.MessageReader(_MAX_ANSWER_BYTES)
                    messages.feed(link.pending)
                    catalog = await read_catalog(link.writer, link.reader, messages)
                    link.writer.write(codec.terminate())
                finally:
                    link.close()
        except (UpstreamUnavailable, CatalogUnavailable, OSError, TimeoutError,
                codec.ProtocolError) as exc:  # fmt: skip
            log.warning(
                "postgres relation catalog not refreshed",
                extra={"fields": {"resource": name, "error": str(exc)[:300]}},
            )
            return
        if generation == self._generations.get(name, 0):
            self._entries[name] = _Entry(catalog, self._clock(), generation, number)

    def close(self) -> None:
        """Stop the background reads (the engine closes)."""
        for task in [*self._refreshing.values(), *(t for _, t in self._now_reads.values())]:
            task.cancel()

    def invalidate(self, resource: str) -> None:
        """Forget the resource's catalog (its upstream may have changed)."""
        self._generations[resource] = self._generations.get(resource, 0) + 1
        self._entries.pop(resource, None)

    async def get(
        self,
        resource: str,
        writer: asyncio.StreamWriter,
        reader: asyncio.StreamReader,
        messages: codec.MessageReader,
    ) -> RelationCatalog:
        """The fresh catalog of ``resource``, read on this idle upstream link if needed
        (``messages`` is the link's reader, which keeps any bytes read past the answer)."""
        catalog = self.cached(resource)
        if catalog is not None:
            return catalog
        generation = self._generations.get(resource, 0)
        under_way = self._reads.get(resource)
        if under_way is not None and under_way[0] == generation:
            with contextlib.suppress(CatalogUnavailable, OSError, codec.ProtocolError):
                return await asyncio.shield(under_way[1])  # else: read on this link after all
        read: asyncio.Future[RelationCatalog] = asyncio.get_running_loop().create_future()
        self._reads[resource] = entry = (generation, read)
        try:
            catalog = await read_catalog(writer, reader, messages)
        except BaseException as exc:
            read.set_exception(
                exc if isinstance(exc, CatalogUnavailable | OSError | codec.ProtocolError)
                else CatalogUnavailable("the catalog read was abandoned")
            )  # fmt: skip
            read.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            if self._reads.get(resource) is entry:
                del self._reads[resource]
        read.set_result(catalog)
        if generation == self._generations.get(resource, 0):
            self._entries[resource] = _Entry(catalog, self._clock(), generation)
        return catalog


async def read_catalog(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, messages: codec.MessageReader
) -> RelationCatalog:
    """Run :attr:`RelationCatalog.QUERY` as a simple query and build the catalog."""
    rows = await simple_query(writer, reader, messages, RelationCatalog.QUERY)
    return RelationCatalog(_pairs(rows))


def _pairs(rows: list[tuple[bytes | None, ...]]) -> list[tuple[str, str | None]]:
    """(schema, relation name) per row; the name is None on a row for a schema alone."""
    pairs: list[tuple[str, str | None]] = []
    for row in rows:
        if len(row) < 2 or row[0] is None:
            continue
        pairs.append((row[0].decode(), None if row[1] is None else row[1].decode()))
    return pairs


async def simple_query(
    writer: asyncio.StreamWriter,
    reader: asyncio.StreamReader,
    messages: codec.MessageReader,
    sql: str,
) -> list[tuple[bytes | None, ...]]:
    """Run one simple query on an idle link; its data rows (text format), once
    ``ReadyForQuery`` came back. Raises :class:`CatalogUnavailable` on an error answer
    and ``ConnectionError`` when the link closes."""
    writer.write(codec.query(sql))
    await writer.drain()
    rows: list[tuple[bytes | None, ...]] = []
    error: str | None = None
    while True:
        msg = messages.next_message()
        if msg is None:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the connection during the catalog query")
            messages.feed(data)
            continue
        if msg.type == codec.DATA_ROW:
            rows.append(codec.decode_data_row(msg.body))
        elif msg.type == codec.ERROR_RESPONSE:
            fields = codec.decode_error_fields(msg.body)
            error = f"{fields.get('C', '')}: {fields.get('M', '')}"
        elif msg.type == codec.READY_FOR_QUERY:
            if error is not None:
                raise CatalogUnavailable(error)
            return rows


__all__ = ["FRESH_FOR", "CatalogUnavailable", "RelationCatalogs", "read_catalog", "simple_query"]
