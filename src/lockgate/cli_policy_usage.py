"""``lockgate policy suggest | unused``: least privilege from the audit trail.

    lockgate policy suggest --dag D [--since 30d] [--deployment P] [--out DIR]
    lockgate policy unused [--since 30d] [--deployment P] [--json]

Both read the audit trail as ``audit search`` does (this machine's ``data_dir/audit.db``;
with ``state: postgresql`` the shared trail of every replica, ``--local``: this replica's
chain) and hand the rows, streamed, to :mod:`lockgate.policy.suggest` and
:mod:`lockgate.policy.usage`. Nothing here writes a record or creates a database.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockgate._cli_state import add_command
from lockgate._cli_state import config_from as _config
from lockgate.audit.reader import USAGE_FIELDS
from lockgate.policy.suggest import suggestion_name
from lockgate.policy.usage import parse_since

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands
    from lockgate.config import LockgateConfig

#: The record fields the suggestion and the usage report read.
FIELDS = USAGE_FIELDS


#: Rows fetched per round trip from the shared trail while streaming.
_BATCH = 5000


def audit_rows(
    cfg: LockgateConfig, *, dag: str | None, since: float | None, local: bool = False
) -> Iterator[dict[str, Any]]:
    """The audit rows of ``dag`` (every DAG: None) at or after ``since``, oldest first, one
    at a time: a million rows are never all in memory (with shared state, the shared trail
    of every replica, paged by the reader; ``local``: this replica's chain). The reader's
    :meth:`~lockgate.audit.AuditReader.usage_rows` is the one read the console shares."""
    from lockgate.audit import AuditReader

    shipping = None
    if cfg.state.shared and not local:
        from lockgate.state import audit_shipping

        shipping = audit_shipping(cfg)
    with AuditReader(cfg.data_dir / "audit.db", shipping=shipping) as reader:
        yield from reader.usage_rows(dag=dag, since=since, batch=_BATCH)


def _window_rows(
    args: argparse.Namespace, cfg: LockgateConfig, dag: str | None
) -> Iterator[dict[str, Any]] | None:
    """The rows of ``--since``'s window, or None (said on stderr) when it is not a time."""
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"lockgate: {exc}", file=sys.stderr)
        return None
    return audit_rows(cfg, dag=dag, since=since, local=args.local)


def cmd_policy_suggest(args: argparse.Namespace) -> int:
    from lockgate.policy.suggest import suggest

    rows = _window_rows(args, _config(args), args.dag)
    if rows is None:
        return 2
    if args.deployment:
        rows = (r for r in rows if r.get("deployment") == args.deployment)
    found = suggest(rows, args.dag, min_siblings=args.min_siblings, deep_after=args.deep_after)
    if args.out is None:
        print(found.policy_yaml(), end="")
        print("---\n# policy tests (lockgate policy test FILE)")
        print(found.tests_yaml(), end="")
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    name = suggestion_name(args.dag)
    policy_path, tests_path = out / f"{name}.yaml", out / f"{name}.tests.yaml"
    policy_path.write_text(found.policy_yaml(), encoding="utf-8")
    tests_path.write_text(found.tests_yaml(), encoding="utf-8")
    uses, asks = len(found.evidence.used), len(found.denied_asks())
    print(
        f"{len(found.rules)} rule(s) from {uses:,} distinct uses ({asks:,} denied asks, "
        f"not granted): {policy_path}, tests: {tests_path}"
    )
    return 0


def cmd_policy_unused(args: argparse.Namespace) -> int:
    from lockgate.policy import load_policy_files
    from lockgate.policy.usage import format_usage, rule_usage

    cfg = _config(args)
    policy_set = load_policy_files(cfg.policy_files(), {r.name for r in cfg.resources})
    rows = _window_rows(args, cfg, None)
    if rows is None:
        return 2
    uses = rule_usage(policy_set, rows, deployment=args.deployment)
    if args.json:
        print(json.dumps([u.to_dict() for u in uses], indent=2))
    else:
        print(format_usage(uses))
    return 0


def _window_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--since",
        default="30d",
        metavar="T",
        help="records at or after T: a span ago (30d, 12h), unix seconds or ISO 8601 (default 30d)",
    )
    sp.add_argument("--deployment", metavar="P", help="only principals of this deployment")
    sp.add_argument(
        "--local",
        action="store_true",
        help="shared state: this replica's local chain only, not the shared trail",
    )


def add_policy_usage_commands(pol: Subcommands) -> None:
    """Register ``policy suggest`` and ``policy unused`` under the ``policy`` group."""
    sp = add_command(
        pol,
        "suggest",
        cmd_policy_suggest,
        "the smallest rules covering what a DAG was allowed to do, with their policy tests",
    )
    sp.add_argument("--dag", required=True, metavar="D", help="DAG id")
    _window_options(sp)
    sp.add_argument("--out", type=Path, metavar="DIR", help="write the policy and its tests there")
    sp.add_argument(
        "--min-siblings",
        type=int,
        default=2,
        metavar="N",
        help="objects differing in one id segment needed for a one-segment glob (default 2)",
    )
    sp.add_argument(
        "--deep-after",
        type=int,
        default=4,
        metavar="N",
        help="distinct depths under one prefix needed for a '**' glob (default 4)",
    )
    sp = add_command(
        pol, "unused", cmd_policy_unused, "allow rules never used in the window, and by whom"
    )
    _window_options(sp)
    sp.add_argument("--json", action="store_true", help="a JSON list, one object per rule")
