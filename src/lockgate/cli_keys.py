"""``lockgate keys``: rotate and list the signing keys Lockgate tokens and assertions are
signed with (Ed25519 ``EdDSA``, RSA ``RS256``, P-256 ``ES256``: one current key each).

    lockgate keys rotate [--retire-after S] [--alg A]... | keys list
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group
from lockgate._cli_state import open_state as _state
from lockgate.errors import LockgateError
from lockgate.identity.keys import ALGORITHMS

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    st = _state(args)
    # 0 is a real answer (retire the old keys now), so test for None, not falsiness.
    retire = args.retire_after
    if retire is None:
        retire = st.config.tokens.max_ttl + 300
    if retire < 0:
        raise LockgateError("--retire-after must be 0 or more seconds")
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
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    st = _state(args)
    current = {st.keys.current(alg).kid for alg in st.keys.in_use()}
    for k in st.keys.published():
        if k.kid in current:
            mark = "current"
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
    add_command(keys, "list", cmd_keys_list, "list published signing keys and their algorithms")
