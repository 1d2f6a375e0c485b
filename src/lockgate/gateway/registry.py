"""Which engine serves which resource kind.

:data:`ENGINES` maps a resource ``kind`` (as in the config) to the engine class that serves
it, as an import path so that importing the registry loads no engine: a process that
serves no CQL never imports the CQL engine. A new engine is one line here and a class
implementing :class:`lockgate.gateway.engine.Engine`.
"""

from __future__ import annotations

import importlib
from typing import cast

from lockgate.gateway.engine import Engine

#: resource kind -> "module:Class" of its engine
ENGINES: dict[str, str] = {
    "http": "lockgate.gateway.http.engine:HttpEngine",
    "cql": "lockgate.gateway.cql.engine:CqlEngine",
    "postgres": "lockgate.gateway.postgres.engine:PostgresEngine",
}


def kinds() -> tuple[str, ...]:
    """Every resource kind an engine serves, in wiring order."""
    return tuple(ENGINES)


def engine_class(kind: str) -> type[Engine]:
    """The engine class for ``kind``; ``KeyError`` for a kind no engine serves."""
    module, _, name = ENGINES[kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cast("type[Engine]", cls)


__all__ = ["ENGINES", "engine_class", "kinds"]
