"""``lockgate alerts``: try the configured notifiers.

    lockgate alerts test [--notifier NAME]

Sends one test alert (kind ``test``, severity ``info``) through each notifier (or the one
named), past its event filter and rate limit, with its retries, and prints how it went. A
PagerDuty test is resolved right after it is triggered, so it leaves no open incident.
Exit status 0 when every notifier took it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group, config_from
from lockgate.errors import LockgateError

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands
    from lockgate.alerts.senders import Delivery, Notifier


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from lockgate.alerts.service import build_notifiers

    config = config_from(args)
    wanted = args.notifier
    names = [n.name for n in config.alerts.notifiers]
    if not names:
        raise LockgateError("no notifier configured (alerts.notifiers in lockgate.yaml)")
    if wanted is not None and wanted not in names:
        raise LockgateError(f"no notifier named {wanted!r} (configured: {', '.join(names)})")
    host = socket.gethostname()
    notifiers = build_notifiers(config, source=f"lockgate/{host}")
    usable = {n.name for n in notifiers}
    failed = 0
    for name in names:
        if wanted is not None and name != wanted:
            continue
        if name not in usable:  # its secret could not be read; the log line says why
            print(f"{name}: not usable (its URL or key could not be read; see the log)")
            failed += 1
            continue
        notifier = next(n for n in notifiers if n.name == name)
        delivery = asyncio.run(_try(notifier, host))
        print(f"{name}: {_describe(delivery)}")
        failed += delivery.outcome != "sent"
    return 1 if failed else 0


async def _try(notifier: Notifier, host: str) -> Delivery:
    from lockgate.alerts.dispatch import Dispatcher
    from lockgate.alerts.model import Alert

    test = Alert(
        kind="test",
        severity="info",
        summary=f"test alert from lockgate alerts test on {host}",
        subject=f"test-{host}",
    )
    dispatcher = Dispatcher([notifier])
    delivery = await dispatcher.send_now(notifier, test)
    if delivery.outcome == "sent" and notifier.settings.type == "pagerduty":
        resolve = Alert(kind="test", severity="info", summary="test done", subject=test.subject,
                        action="resolve")  # fmt: skip
        await dispatcher.send_now(notifier, resolve)
    return delivery


def _describe(d: Delivery) -> str:
    tries = f"{d.attempts} attempt{'s' if d.attempts != 1 else ''}"
    status = f", HTTP {d.status}" if d.status is not None else ""
    error = f", {d.error}" if d.error else ""
    return f"{d.outcome} ({tries}{status}{error})"


def add_alerts_commands(sub: Subcommands) -> None:
    alerts = add_group(sub, "alerts", "alert notifiers")
    sp = add_command(
        alerts,
        "test",
        cmd_alerts_test,
        "send a test alert through every configured notifier (or one) and print the outcome",
    )
    sp.add_argument("--notifier", metavar="NAME", help="only this notifier")


__all__ = ["add_alerts_commands", "cmd_alerts_test"]
