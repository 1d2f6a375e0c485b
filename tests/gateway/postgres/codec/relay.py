"""A recording TCP relay between a real client (libpq: psql, psycopg) and a real server.

Test code only. Every byte in each direction is kept per connection. An SSLRequest or
GSSENCRequest from the client is answered 'N' by the relay itself (and not forwarded), so a
client with ``sslmode=prefer`` goes on in clear and the whole session stays readable; the
recorded client stream still starts with that request.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

# Written out rather than taken from the codec under test.
ENCRYPTION_REQUESTS = (struct.pack("!ii", 8, 80877103), struct.pack("!ii", 8, 80877104))


@dataclass
class Capture:
    client: bytearray = field(default_factory=bytearray)  # client -> server, as sent
    server: bytearray = field(default_factory=bytearray)  # server -> client
    done: threading.Event = field(default_factory=threading.Event)


def _recv_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


class RecordingRelay:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.captures: list[Capture] = []
        accept = threading.Thread(target=self._accept_loop, daemon=True)
        accept.start()

    def close(self) -> None:
        self._listener.close()
        for capture in self.captures:
            capture.done.wait(10)

    def __enter__(self) -> RecordingRelay:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            capture = Capture()
            self.captures.append(capture)
            threading.Thread(target=self._serve, args=(client, capture), daemon=True).start()

    def _serve(self, client: socket.socket, capture: Capture) -> None:
        server: socket.socket | None = None
        try:
            while True:
                head = _recv_exact(client, 8)
                capture.client += head
                if head not in ENCRYPTION_REQUESTS:
                    break
                client.sendall(b"N")
            server = socket.create_connection(self._upstream)
            server.sendall(head)
            back = threading.Thread(
                target=self._pump, args=(server, client, capture.server), daemon=True
            )
            back.start()
            self._pump(client, server, capture.client)
            back.join(10)
        finally:
            client.close()
            if server is not None:
                server.close()
            capture.done.set()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while chunk := src.recv(65536):
                record += chunk
                dst.sendall(chunk)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def wait(self, count: int, timeout: float = 10) -> list[Capture]:
        """The first ``count`` captures, once each connection has closed."""
        for capture in self.captures[:count]:
            assert capture.done.wait(timeout), "relay connection still open"
        assert len(self.captures) >= count, f"{len(self.captures)} connections, wanted {count}"
        return self.captures[:count]
