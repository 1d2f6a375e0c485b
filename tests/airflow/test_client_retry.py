"""The secrets backend's client waits out a 429 within its retry budget."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lockgate.airflow._client import GatewayUnavailable, TokenServiceClient

TOKEN = {"access_token": "t", "expires_in": 900, "jti": "j", "principal": "p"}


@pytest.fixture
def answers() -> Iterator[tuple[list[tuple[int, dict[str, str]]], str]]:
    """(queue of (status, headers) the server answers in turn, then 200; its URL)."""
    queue: list[tuple[int, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            status, headers = queue.pop(0) if queue else (200, {})
            body = json.dumps(TOKEN if status == 200 else {"error": "slow_down"}).encode()
            self.send_response(status)
            for k, v in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield queue, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


COORDS: dict[str, str | int] = {"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 1}


def test_a_429_is_retried_after_the_time_it_names(
    answers: tuple[list[tuple[int, dict[str, str]]], str],
) -> None:
    queue, url = answers
    queue += [(429, {"Retry-After": "1"}), (429, {"Retry-After": "garbage"})]
    client = TokenServiceClient(url, "prod", client_secret="s", retry_budget=5)
    assert client.mint(conn_id="c", coords=COORDS, requested_ttl=None).token == "t"
    assert queue == []


def test_a_wait_past_the_budget_is_unavailable_at_once(
    answers: tuple[list[tuple[int, dict[str, str]]], str],
) -> None:
    queue, url = answers
    queue += [(429, {"Retry-After": "60"})]
    client = TokenServiceClient(url, "prod", client_secret="s", retry_budget=5)
    with pytest.raises(GatewayUnavailable, match="retry after 60 s"):
        client.mint(conn_id="c", coords=COORDS, requested_ttl=None)
