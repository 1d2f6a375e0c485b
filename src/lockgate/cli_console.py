"""``lockgate console``: the web console's command line.

    lockgate console link [--ttl SECONDS]

``link`` prints a one-time admin link to the console: it works once, within ``--ttl``
seconds (default ``console.link_ttl``), and signs whoever opens it in as an admin. It is
made in the same state the gateway reads (``data_dir/console.db``, or the shared
PostgreSQL), so it works while ``lockgate serve`` runs; it is the break-glass way in when
the OIDC provider is down. Making it is audited (``console_link_created``, naming the
subject its session will have, never the link).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group, audit_now, open_state
from lockgate.errors import LockgateError

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands


def cmd_console_link(args: argparse.Namespace) -> int:
    from lockgate.console.links import issue_link

    st = open_state(args)
    try:
        if not st.config.console.enabled:
            raise LockgateError("console.enabled is false: the gateway serves no console")
        try:
            link = issue_link(st.config, st.database("console"), ttl=args.ttl)
        except ValueError as exc:
            raise LockgateError(f"--ttl: {exc}") from None
        audit_now(
            st, "console_link_created", object=link.subject, decision="allow",
            detail={"ttl": link.ttl},
        )  # fmt: skip
    finally:
        st.close()
    print(link.url)  # alone on stdout: a script can take it
    print(f"one use, within {link.ttl:g}s; it signs you in as an admin", file=sys.stderr)
    return 0


def add_console_commands(sub: Subcommands) -> None:
    console = add_group(sub, "console", "the web console")
    sp = add_command(
        console,
        "link",
        cmd_console_link,
        "print a one-time admin link to the console (works while the gateway runs)",
    )
    sp.add_argument(
        "--ttl",
        type=float,
        metavar="SECONDS",
        help="seconds the link stays usable (default: console.link_ttl)",
    )


__all__ = ["add_console_commands", "cmd_console_link"]
