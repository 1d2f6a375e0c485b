"""Large bodies stream through the gateway in bounded memory, both directions."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest

from .conftest import bearer

MiB = 1024 * 1024
RSS_BOUND = 64 * MiB
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRss:
    """Samples this process's RSS while a transfer runs (gateway, upstream, client)."""

    def __init__(self) -> None:
        self.base = _rss()
        self.peak = self.base
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _rss())
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


async def _blocks(total: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    block = os.urandom(256 * 1024)
    left = total
    while left:
        piece = block[: min(left, len(block))]
        digest.update(piece)
        left -= len(piece)
        yield piece


async def _upload(url: str, size: int, *, with_length: bool) -> None:
    sent = hashlib.sha256()
    headers = bearer()
    if with_length:
        headers["Content-Length"] = str(size)
    async with (
        aiohttp.ClientSession() as s,
        PeakRss() as mem,
        s.put(f"{url}/orders/upload", data=_blocks(size, sent), headers=headers) as r,
    ):
        assert r.status == 200
        seen = await r.json()
    assert seen["size"] == size
    assert seen["sha256"] == sent.hexdigest()
    assert mem.growth < RSS_BOUND, f"RSS grew by {mem.growth / MiB:.1f} MiB"


async def _download(url: str, size: int) -> None:
    got = 0
    async with (
        aiohttp.ClientSession() as s,
        PeakRss() as mem,
        s.get(f"{url}/orders/download?size={size}", headers=bearer()) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Length"] == str(size)
        async for data in r.content.iter_chunked(256 * 1024):
            got += len(data)
    assert got == size
    assert mem.growth < RSS_BOUND, f"RSS grew by {mem.growth / MiB:.1f} MiB"


async def test_200mib_chunked_upload(make_gateway, upstream) -> None:
    gw = await make_gateway()
    await _upload(gw.url, 200 * MiB, with_length=False)
    assert gw.audit.records[-1].bytes_in == 200 * MiB


async def test_64mib_upload_with_content_length(make_gateway, upstream) -> None:
    gw = await make_gateway()
    await _upload(gw.url, 64 * MiB, with_length=True)
    assert upstream.seen[-1]["headers"].get("Content-Length") == str(64 * MiB)


async def test_200mib_download(make_gateway, upstream) -> None:
    gw = await make_gateway()
    await _download(gw.url, 200 * MiB)
    assert gw.audit.records[-1].bytes_out > 200 * MiB


@pytest.mark.slow
async def test_1gib_both_ways(make_gateway, upstream) -> None:
    gw = await make_gateway()
    await _upload(gw.url, 1024 * MiB, with_length=False)
    await _download(gw.url, 1024 * MiB)
