"""``lockgate token``: revoke tokens, the kill switch (block / unblock), list revocations.

    lockgate token revoke --jti J | --dag D [--run R] [--deployment N] | --deployment N
    lockgate token revoke --dag D | --deployment N --block   kill switch: no new token either
    lockgate token unblock --dag D | --deployment N
    lockgate token revocations

Everything is written to ``data_dir/revocations.db``; running gateways (every ``--workers``
process) pick it up within :data:`~lockgate.identity.revocation.REFRESH_INTERVAL`. Each
change is audited (``token_revoked``, ``mint_blocked``, ``mint_unblocked``).
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
import time
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group
from lockgate._cli_state import audit_now as _audit_now
from lockgate._cli_state import open_state as _state
from lockgate.config import LockgateConfig
from lockgate.errors import LockgateError

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands
    from lockgate.state import State


def cmd_token_revoke(args: argparse.Namespace) -> int:
    if args.block:
        return _block(args)
    args.reason = args.reason or "revoked by operator"
    st = _state(args)
    if args.jti:
        st.revocations.revoke_jti(args.jti, time.time() + st.config.tokens.max_ttl, args.reason)
        print(f"revoked token {args.jti}")
    elif args.dag:
        st.revocations.revoke_dag(args.deployment, args.dag, args.run, args.reason)
        scope = f"dag {args.dag}" + (f" run {args.run}" if args.run else "")
        print(f"revoked every token issued so far for {scope}")
    elif args.deployment and not args.run:
        from lockgate.identity.revocation import ANY_DAG

        _check_deployment(st.config, args.deployment)
        st.revocations.revoke_dag(args.deployment, ANY_DAG, None, args.reason)
        print(f"revoked every token issued so far for deployment {args.deployment}")
    else:
        print("lockgate token revoke: give --jti, --dag or --deployment", file=sys.stderr)
        return 2
    _record(
        st, "token_revoked", deployment=args.deployment, dag_id=args.dag, run_id=args.run,
        jti=args.jti, reason=args.reason,
    )  # fmt: skip
    _say_when_applied()
    return 0


def _record(
    st: State,
    event: str,
    *,
    deployment: str | None,
    dag_id: str | None,
    run_id: str | None = None,
    jti: str | None = None,
    reason: str | None = None,
) -> None:
    """Audit an operator's revocation, block or unblock: the record the console writes too
    (:func:`lockgate.console.live.operator_record`), by the operator running the command."""
    from lockgate.console.live import operator_record

    record = operator_record(
        event, by=_operator(), deployment=deployment, dag_id=dag_id, run_id=run_id, jti=jti,
        reason=reason,
    )  # fmt: skip
    _audit_now(st, record.event, **{k: v for k, v in record.to_dict().items() if k != "event"})


def _say_when_applied() -> None:
    from lockgate.identity.revocation import REFRESH_INTERVAL

    print(f"running gateways apply it within {REFRESH_INTERVAL:g}s")


def _operator() -> str:
    try:
        return f"operator {getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "operator (unknown user)"


def _check_deployment(cfg: LockgateConfig, name: str | None) -> None:
    # A typo here would stop nothing: refuse it rather than store a no-op.
    if name is not None and cfg.deployment(name) is None:
        known = ", ".join(d.name for d in cfg.deployments) or "none"
        raise LockgateError(f"{cfg.source}: no deployment named {name!r} (known: {known})")


def _delegated(cfg: LockgateConfig, deployment: str | None, dag: str) -> bool:
    from lockgate.identity._request import may_act_for

    return any(may_act_for(d, dag) for d in cfg.deployments if deployment in (None, d.name))


def _block_scope(args: argparse.Namespace) -> tuple[str | None, str | None]:
    if args.jti or args.run or not (args.dag or args.deployment):
        raise LockgateError("--block and unblock take --dag, --deployment or both (no --jti/--run)")
    return args.deployment, args.dag


def _block(args: argparse.Namespace) -> int:
    deployment, dag = _block_scope(args)
    st = _state(args)
    _check_deployment(st.config, deployment)
    if dag is not None and not _delegated(st.config, deployment, dag):
        print(f"warning: no configured deployment may act for dag {dag}", file=sys.stderr)
    blk = st.revocations.block(deployment, dag, _operator(), args.reason or "")
    _record(st, "mint_blocked", deployment=deployment, dag_id=dag, reason=args.reason)
    print(blk.message())
    print("its live tokens are revoked and it gets no new one until `lockgate token unblock`")
    _say_when_applied()
    return 0


def cmd_token_unblock(args: argparse.Namespace) -> int:
    deployment, dag = _block_scope(args)
    st = _state(args)
    if not st.revocations.unblock(deployment, dag):
        scope = " ".join(
            x for x in (deployment and f"deployment {deployment}", dag and f"dag {dag}") if x
        )
        print(f"lockgate: no block on {scope} (see lockgate token revocations)", file=sys.stderr)
        return 1
    _record(st, "mint_unblocked", deployment=deployment, dag_id=dag)
    print("unblocked: new tokens can be minted again; tokens revoked by the block stay revoked")
    return 0


def cmd_token_revocations(args: argparse.Namespace) -> int:
    st = _state(args)
    for r in st.revocations.list():
        print(json.dumps(dataclasses.asdict(r), default=str))
    return 0


def add_token_commands(sub: Subcommands) -> None:
    """The ``token`` subcommands, on the top-level parser's subparsers ``sub``."""
    tok = add_group(sub, "token", "token commands")
    sp = add_command(
        tok,
        "revoke",
        cmd_token_revoke,
        "revoke a token by jti, or every token of a DAG (run) or deployment; "
        "--block: and mint none until unblocked",
    )
    sp.add_argument("--jti", metavar="J", help="one token, by its jti claim")
    sp.add_argument("--dag", metavar="D", help="every token issued so far for this DAG")
    sp.add_argument("--run", metavar="R", help="with --dag: only this DAG run")
    sp.add_argument(
        "--deployment",
        metavar="N",
        help="limit a DAG revocation to one deployment; alone: all its DAGs",
    )
    sp.add_argument(
        "--reason", metavar="TEXT", help="shown in the list, the audit and refused mints"
    )
    sp.add_argument(
        "--block",
        action="store_true",
        help="kill switch: also refuse new tokens for the DAG (or deployment) until unblocked",
    )
    sp = add_command(
        tok, "unblock", cmd_token_unblock, "lift a --block (revoked tokens stay revoked)"
    )
    sp.add_argument("--dag", metavar="D", help="the DAG the block names")
    sp.add_argument("--deployment", metavar="N", help="the deployment the block names")
    sp.set_defaults(jti=None, run=None)
    add_command(tok, "revocations", cmd_token_revocations, "list active revocations and blocks")
