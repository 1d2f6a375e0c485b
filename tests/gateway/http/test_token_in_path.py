"""A Lockgate token carried in a path (the Cosmos DB profile's ``/_t/<token>/`` prefix) never
reaches an audit record of a refusal the connection answers itself (framing 400, 408)."""

from __future__ import annotations

import json
from typing import Any

from .conftest import raw_request
from .test_refusals import make_stack  # noqa: F401 - the fixture


async def test_a_framing_refusal_keeps_no_token_from_the_path(make_stack: Any) -> None:  # noqa: F811
    st = await make_stack()
    token, _ = st.token()
    line = f"GET /orders/_t/{token}/dbs/sales/colls/orders HTTP/1.1\r\n".encode()
    out = await raw_request(
        st.port, line + b"Host: g\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 400 ")
    st.engine._idle_timeout = 0.2  # for the connection opened next: a head never finished
    out = await raw_request(st.port, line + b"Host: g\r\n", timeout=3.0)
    assert out.startswith(b"HTTP/1.1 408 ")
    rows = st.rows(decision="deny")
    assert [r.status for r in rows] == [400, 408]
    for row in rows:
        assert row.detail["request"].startswith("GET /orders/_t/[token]/dbs/")
        assert token not in json.dumps(row.to_dict())
        for part in token.split("."):  # no part of it (truncation alone kept the signature out)
            assert part not in json.dumps(row.to_dict())
