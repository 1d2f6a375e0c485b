"""``lockgate keys``: rotate, retire and list the signing keys Lockgate tokens and
assertions are signed with (Ed25519 ``EdDSA``, RSA ``RS256``, P-256 ``ES256``: one current
key each).

    lockgate keys rotate [--retire-after S] [--alg A]... | keys retire --alg A [--after S]
    | keys list
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group
from lockgate._cli_state import audit_now as _audit_now
from lockgate._cli_state import open_state as _state
from lockgate.errors import LockgateError
from lockgate.identity.keys import ALGORITHMS

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands
    from lockgate.state import State


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    st = _state(args)
    retire = _default_overlap(args.retire_after, st, "--retire-after")
    for key in st.keys.rotate_each(retire_after=retire, algorithms=args.alg):
        # Shared keys and RS256/ES256 keys are published first, so every replica and every
        # cloud caching the JWKS knows them before they sign.
        when = (
            f", signs from {time.strftime('%H:%M:%S', time.localtime(key.signs_from))}"
            if key.signs_from > time.time()
            else ""
        )
        older = (
            f"older {key.alg} keys retire now"
            if retire == 0
            else f"older {key.alg} keys stay published for at most {retire}s more"
        )
        print(f"new signing key {key.kid}; {key.alg}; published now{when}; {older}")
        _audit_now(
            st,
            "key_rotated",
            resource=None,
            object=key.kid,
            detail={"alg": key.alg, "signs_from": int(key.signs_from), "retire_after": retire},
        )
    return 0


def _default_overlap(given: int | None, st: State, flag: str) -> int:
    """``flag``'s seconds, by default ``tokens.max_ttl + 300`` (0 is a real answer: at once,
    so test for None, not falsiness)."""
    seconds = st.config.tokens.max_ttl + 300 if given is None else given
    if seconds < 0:
        raise LockgateError(f"{flag} must be 0 or more seconds")
    return seconds


def cmd_keys_retire(args: argparse.Namespace) -> int:
    if args.alg is None:  # checked here, not by argparse: every verb parses with no option
        raise LockgateError("keys retire needs --alg: the algorithm to withdraw")
    st = _state(args)
    after = _default_overlap(args.after, st, "--after")
    # KeyStore.retire refuses EdDSA and what the configuration still needs, saying why.
    for key in st.keys.retire(args.alg, after):
        assert key.retire_at is not None  # retire gives every key of the algorithm a time
        when = "now" if key.retire_at <= time.time() else time.ctime(key.retire_at)
        print(f"signing key {key.kid}; {key.alg}; retires {when}")
        _audit_now(
            st,
            "key_retired",
            resource=None,
            object=key.kid,
            detail={"alg": key.alg, "retire_at": int(key.retire_at)},
        )
    print(
        f"{args.alg} withdrawn: keys rotate no longer rotates it; the JWKS lists each of its "
        "keys until it retires"
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    st = _state(args)
    in_use = st.keys.in_use()
    current = {st.keys.current(alg).kid for alg in in_use}
    for k in st.keys.published():
        if k.kid in current:
            mark = "current"
        elif k.retire_at and k.alg not in in_use:  # keys retire withdrew the algorithm
            mark = f"retiring at {time.ctime(k.retire_at)} (algorithm withdrawn)"
        elif k.retire_at:
            mark = f"retires at {time.ctime(k.retire_at)}"
        elif k.signs_from > time.time():
            mark = f"published, signs from {time.ctime(k.signs_from)}"
        else:
            mark = "published"
        print(f"{k.kid}  {k.alg:<5}  created {time.ctime(k.created)}  {mark}")
    return 0


def add_keys_commands(sub: Subcommands) -> None:
    keys = add_group(sub, "keys", "signing keys")
    sp = add_command(
        keys,
        "rotate",
        cmd_keys_rotate,
        "add a signing key of each algorithm in use; old keys stay published until their "
        "tokens expire",
    )
    sp.add_argument(
        "--retire-after",
        type=int,
        metavar="SECONDS",
        help="seconds to keep the old keys published (default: tokens.max_ttl + 300; "
        "0 retires them at once)",
    )
    sp.add_argument(
        "--alg",
        action="append",
        choices=ALGORITHMS,
        help="rotate only this algorithm's key (repeatable; default: every algorithm in use)",
    )
    sp = add_command(
        keys,
        "retire",
        cmd_keys_retire,
        "withdraw an algorithm the configuration no longer needs: every key of it leaves the "
        "JWKS once its tokens expire (or at once) and is no longer rotated",
    )
    sp.add_argument(
        "--alg",
        choices=ALGORITHMS,
        help="the algorithm to withdraw (required; not EdDSA, nor one the configuration names)",
    )
    sp.add_argument(
        "--after",
        type=int,
        metavar="SECONDS",
        help="seconds its keys stay published (default: tokens.max_ttl + 300; 0 retires "
        "them at once, for a leaked key)",
    )
    add_command(keys, "list", cmd_keys_list, "list published signing keys and their algorithms")
