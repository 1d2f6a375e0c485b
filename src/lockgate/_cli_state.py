"""What the ``lockgate`` commands share: how a subcommand is declared, the config lookup,
the state, and one-off audit records written by the command itself.

The state and audit modules are imported lazily, so ``config check`` and ``--help`` stay
quick.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lockgate.config import LockgateConfig, load_config

if TYPE_CHECKING:
    from lockgate.state import State

    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def add_command(
    parent: Subcommands, name: str, fn: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    """Declare subcommand ``name`` of ``parent``, run by ``fn``; its parser, for arguments."""
    sp = parent.add_parser(name, help=help, description=help)
    sp.set_defaults(fn=fn)
    return sp


def config_from(args: argparse.Namespace) -> LockgateConfig:
    """``--config``, else ``$LOCKGATE_CONFIG``, else ``./lockgate.yaml``."""
    path = args.config or os.environ.get("LOCKGATE_CONFIG") or "lockgate.yaml"
    return load_config(path)


def open_state(args: argparse.Namespace) -> State:
    from lockgate.state import State

    return State(config_from(args))


def audit_now(st: State, event: str, **fields: Any) -> None:
    """Write one audit record from the command (None fields left out) and wait for it."""
    import asyncio

    from lockgate.audit import AuditRecord

    log = st.audit_log()
    try:
        record = AuditRecord(event=event, **{k: v for k, v in fields.items() if v is not None})
        asyncio.run(log.write(record))
    finally:
        log.close()
