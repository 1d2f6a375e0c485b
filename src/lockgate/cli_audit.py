"""``lockgate audit``: read and check the audit trail.

    lockgate audit tail [-n N] | audit search --dag D [--run R] [--decision deny] | audit verify
    lockgate audit search --task T --try N --action A --principal P --jti ID --since T --until T
    lockgate audit search --shadow     # what a shadow policy would decide otherwise
    lockgate audit export --format ocsf|jsonl [--since T] [--limit N]

With ``state: sqlite`` they read this machine's chain (``data_dir/audit.db``). With
``state: postgresql`` they read the shared trail of every replica (``--replica R``: one of
them; ``--local``: this replica's own chain only), and ``verify`` checks every replica's
chain and the signed checkpoints of all chain heads (the master key, which shared state
needs given, checks the signatures). Nothing here writes a record or creates a database.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group
from lockgate._cli_state import config_from as _config

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands
    from lockgate.audit import AuditReader, AuditRecord


def _audit_log(args: argparse.Namespace) -> AuditReader:
    """Read-only view: no writer thread, no empty database created."""
    from lockgate.audit import AuditReader

    cfg = _config(args)
    shipping = None
    if cfg.state.shared and not getattr(args, "local", False):
        from lockgate.state import audit_shipping

        shipping = audit_shipping(cfg)
    return AuditReader(cfg.data_dir / "audit.db", shipping=shipping)


def cmd_audit_tail(args: argparse.Namespace) -> int:
    from lockgate.audit import format_records

    with _audit_log(args) as log:
        print(format_records(log.tail(args.n), as_json=args.json))
    return 0


def cmd_audit_search(args: argparse.Namespace) -> int:
    from lockgate.audit import AuditQuery, format_records

    try:
        since, until = _time(args.since, "since"), _time(args.until, "until")
    except ValueError as exc:
        print(f"lockgate: audit search {exc}", file=sys.stderr)
        return 2
    q = AuditQuery(
        deployment=args.deployment, dag=args.dag, run=args.run, task=args.task,
        try_number=args.try_number, resource=args.resource, action=args.action,
        decision=args.decision, event=args.event, principal=args.principal, jti=args.jti,
        since=since, until=until, shadow=args.shadow, replica=args.replica,
    )  # fmt: skip
    with _audit_log(args) as log:
        rows = log.query(q, limit=args.limit).rows[::-1]  # oldest first, as tail prints
    if args.shadow and not args.json:
        # Only differing verdicts are recorded (gateway/records.py): the detail says it all.
        print(_with_shadow_verdicts(format_records(rows), rows))
        return 0
    print(format_records(rows, as_json=args.json))
    return 0


def _time(text: str | None, flag: str) -> float | None:
    """``--since``/``--until``: unix seconds or ISO 8601 (a time without an offset is UTC)."""
    from lockgate.audit.query import parse_time

    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(
            f"--{flag} {text!r}: expected unix seconds or an ISO 8601 time "
            "(2026-12-05T13:00:00+00:00)"
        ) from None


def _with_shadow_verdicts(table: str, rows: Sequence[AuditRecord]) -> str:
    """The record table (enforced decisions), each row followed by its shadow verdict."""
    lines = table.split("\n")
    if not rows:
        return table
    out = lines[:1]
    for line, row in zip(lines[1:], rows, strict=True):
        shadow = row.detail["shadow"]
        would = "would allow" if shadow.get("decision") == "allow" else "would deny"
        rule = f" rule={shadow['rule']}" if shadow.get("rule") else ""
        out += [line, f"    shadow: {would}{rule} {shadow.get('reason') or ''}".rstrip()]
    return "\n".join(out)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    if args.ocsf is not None:
        return _verify_ocsf_export(args.ocsf, args.prev_hash)
    with _audit_log(args) as log:
        return _verify_chain(args, log)


def _verify_chain(args: argparse.Namespace, log: AuditReader) -> int:
    if args.replay:  # an audit log chains stopped processes' journals as it starts
        from lockgate.audit import AuditLog, ocsf

        cfg = _config(args)
        AuditLog(
            log.db_path, cfg.audit.jsonl, cfg.audit.write_timeout, ocsf_path=cfg.audit.ocsf,
            datastores=ocsf.datastores(cfg.resources),
        ).close()  # fmt: skip
    result = log.verify()
    if not result.ok:
        print(f"audit chain BROKEN at record {result.first_bad_seq}: {result.problem}")
        return 1
    signed = f", {result.checkpoints} signed checkpoints" if log.shipping is not None else ""
    print(f"audit chain intact: {result.checked} records{signed}")
    waiting = log.journal_backlog()
    live = [b for b in waiting if b.live]
    stopped = [b for b in waiting if not b.live]
    if live:
        print(f"{sum(b.entries for b in live)} written-ahead records of {len(live)} running "
              "process(es) are on their way into the chain")  # fmt: skip
    if stopped:
        print(f"NOT CHAINED YET: {sum(b.entries for b in stopped)} written-ahead records in "
              f"the journals of {len(stopped)} stopped process(es); run `lockgate audit "
              "verify --replay` (or start the gateway) to chain them")  # fmt: skip
        return 1
    return 0


def _verify_ocsf_export(path: Path, prev_hash: str | None) -> int:
    """An OCSF export (``audit.ocsf`` or ``audit export``) checked on its own: the chain its
    events carry re-hashed, and every event exactly its row's mapping."""
    from lockgate.audit import ocsf
    from lockgate.audit.record import GENESIS

    try:
        with path.open("rb") as fh:
            check = ocsf.verify_export(fh, prev_hash or GENESIS)
    except OSError as exc:
        print(f"lockgate: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for line, problem in check.problems[:20]:
        print(f"{path}:{line}: {problem}")
    if not check.ok:
        print(f"OCSF export ALTERED OR BROKEN: {len(check.problems)} problem(s)")
        return 1
    print(f"OCSF export intact: {check.events} events, head {check.head}")
    return 0


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Print records as ``audit.jsonl`` or ``audit.ocsf`` would hold them, one per line."""
    from lockgate.audit import ocsf
    from lockgate.audit.sinks import encode_line

    cfg = _config(args)
    try:
        since = _time(args.since, "since")
    except ValueError as exc:
        print(f"lockgate: audit export {exc}", file=sys.stderr)
        return 2
    with _audit_log(args) as log:
        rows = log.search(since=since, limit=args.limit, replica=args.replica)
    datastores = ocsf.datastores(cfg.resources)
    for row in rows:  # one line each, as the mirrors write them
        print(encode_line(ocsf.event(row, datastores) if args.format == "ocsf" else row.to_dict()))
    return 0


def _local_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--local",
        action="store_true",
        help="shared state: this replica's local chain only, not the shared trail",
    )


def add_audit_commands(sub: Subcommands) -> None:
    aud = add_group(sub, "audit", "audit trail")
    sp = add_command(aud, "tail", cmd_audit_tail, "show the newest records, oldest first")
    sp.add_argument("-n", type=int, default=20, metavar="N", help="how many records")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    _local_flag(sp)
    sp = add_command(aud, "search", cmd_audit_search, "records matching every filter given")
    sp.add_argument("--deployment", metavar="NAME", help="Airflow deployment")
    sp.add_argument("--dag", metavar="D", help="DAG id")
    sp.add_argument("--run", metavar="R", help="DAG run id")
    sp.add_argument("--task", metavar="T", help="task id")
    sp.add_argument("--try", dest="try_number", type=int, metavar="N", help="try number")
    sp.add_argument(
        "--decision",
        choices=["allow", "deny", "error"],
        help="deny: every refusal; error: what the gateway or the upstream could not serve",
    )
    sp.add_argument("--event", metavar="E", help="record event, e.g. token_issued, denied")
    sp.add_argument("--resource", metavar="NAME", help="resource name")
    sp.add_argument("--action", metavar="A", help="action, e.g. read, write, admin")
    sp.add_argument(
        "--principal", metavar="P", help="who acted, e.g. airflow:prod/etl/load, console:alice"
    )
    sp.add_argument("--jti", metavar="ID", help="token id: every record of one token")
    sp.add_argument("--since", metavar="T", help="at or after T (unix seconds or ISO 8601)")
    sp.add_argument("--until", metavar="T", help="before T (unix seconds or ISO 8601)")
    sp.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most the newest N records"
    )
    sp.add_argument("--replica", metavar="R", help="shared state: only this replica's records")
    sp.add_argument(
        "--shadow",
        action="store_true",
        help="only records a shadow policy would decide otherwise (would deny / would allow), "
        "with both decisions",
    )
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    _local_flag(sp)
    sp = add_command(
        aud, "export", cmd_audit_export, "records as JSON lines, as they are or as OCSF events"
    )
    sp.add_argument(
        "--format",
        choices=["ocsf", "jsonl"],
        default="ocsf",
        help="ocsf: one OCSF event per line (as audit.ocsf); jsonl: records as audit.jsonl",
    )
    sp.add_argument("--since", metavar="T", help="records at or after T (unix seconds or ISO 8601)")
    sp.add_argument(
        "--limit", type=int, default=1_000_000, metavar="N", help="at most the newest N records"
    )
    sp.add_argument("--replica", metavar="R", help="shared state: only this replica's records")
    _local_flag(sp)
    sp = add_command(
        aud,
        "verify",
        cmd_audit_verify,
        "check the hash chain; exit 1 at the first bad record or when stopped processes' "
        "journals hold records not chained yet",
    )
    sp.add_argument(
        "--replay",
        action="store_true",
        help="chain those journals first (what the gateway does when it starts)",
    )
    sp.add_argument(
        "--ocsf",
        type=Path,
        metavar="FILE",
        help="check an OCSF export instead: its chain re-hashed, each event its row's mapping",
    )
    sp.add_argument(
        "--prev-hash",
        metavar="H",
        help="with --ocsf: the hash before the export's first event (default: the chain's start)",
    )
    _local_flag(sp)
