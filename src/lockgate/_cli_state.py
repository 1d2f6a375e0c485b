"""What the ``lockgate`` commands share: how a subcommand is declared, the global options,
the config lookup, the state, and one-off audit records written by the command itself.

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


CONFIG_HELP = "path to lockgate.yaml (default: $LOCKGATE_CONFIG, else ./lockgate.yaml)"


def add_global_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """The options every command takes, before the command or after it.

    ``lockgate -c X serve`` and ``lockgate serve -c X`` mean the same. Below the top level
    the default is SUPPRESS: an option not given after the command leaves the value given
    before it (or the top level's default) alone, and one given after it wins.
    """
    default = None if top_level else argparse.SUPPRESS
    parser.add_argument("-c", "--config", metavar="PATH", default=default, help=CONFIG_HELP)


def add_command(
    parent: Subcommands, name: str, fn: Callable[[argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    """Declare subcommand ``name`` of ``parent``, run by ``fn``; its parser, for arguments."""
    sp = parent.add_parser(name, help=help, description=help)
    add_global_options(sp)
    sp.set_defaults(fn=fn)
    return sp


def add_group(parent: Subcommands, name: str, help: str) -> Subcommands:
    """Declare command group ``name`` (``lockgate policy ...``); its subcommands' parent."""
    group = parent.add_parser(name, help=help, description=help)
    add_global_options(group)
    return group.add_subparsers(dest="sub", required=True)


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
