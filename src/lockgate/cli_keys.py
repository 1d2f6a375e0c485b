"""``lockgate keys``: rotate and list the signing keys Lockgate tokens and assertions are
signed with.

    lockgate keys rotate [--retire-after S] | keys list
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group
from lockgate._cli_state import open_state as _state
from lockgate.errors import LockgateError

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
    key = st.keys.rotate(retire_after=retire)
    when = (
        f", signs from {time.strftime('%H:%M:%S', time.localtime(key.signs_from))}"
        if key.signs_from > time.time()  # shared keys: published first, so every replica knows it
        else ""
    )
    print(f"new signing key {key.kid}; published now{when}; "
          f"previous keys stay published for {retire}s")  # fmt: skip
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    st = _state(args)
    current = st.keys.current().kid
    for k in st.keys.published():
        if k.kid == current:
            mark = "current"
        elif k.retire_at:
            mark = f"retires at {time.ctime(k.retire_at)}"
        elif k.signs_from > time.time():
            mark = f"published, signs from {time.ctime(k.signs_from)}"
        else:
            mark = "published"
        print(f"{k.kid}  created {time.ctime(k.created)}  {mark}")
    return 0


def add_keys_commands(sub: Subcommands) -> None:
    keys = add_group(sub, "keys", "signing keys")
    sp = add_command(
        keys,
        "rotate",
        cmd_keys_rotate,
        "add a signing key; old keys stay published until their tokens expire",
    )
    sp.add_argument(
        "--retire-after",
        type=int,
        metavar="SECONDS",
        help="seconds to keep the old keys published (default: tokens.max_ttl + 300; "
        "0 retires them at once)",
    )
    add_command(keys, "list", cmd_keys_list, "list published signing keys")
