"""Run the stand-in CQL node: ``python -m lockgate.demo.standins.cqlserver --port 9042``.

Options: ``--user u:p`` (repeatable) and more, see ``--help``.

A stand-in for demos and tests, written from the CQL protocol spec: not Apache Cassandra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .server import start_cql_server


def _pair(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME:PASSWORD")
    return name, password


async def _main(args: argparse.Namespace) -> None:
    users = dict(args.user or [("cassandra", "cassandra")])
    logins = dict(args.login or [])
    server = await start_cql_server(
        args.host,
        args.port,
        users={**users, **logins},
        superusers=set(users),
        fake_peers=args.peer or (),
        execution_log=args.execution_log,
    )
    print(f"fake CQL server on {server.host}:{server.port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.close()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m lockgate.demo.standins.cqlserver")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9042)
    ap.add_argument("--user", type=_pair, action="append", help="superuser NAME:PASSWORD")
    ap.add_argument("--login", type=_pair, action="append", help="ordinary role NAME:PASSWORD")
    ap.add_argument("--peer", action="append", help="fake system.peers address")
    ap.add_argument("--execution-log", help="append every executed statement here (JSON lines)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(ap.parse_args()))


if __name__ == "__main__":
    main()
