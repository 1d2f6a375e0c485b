"""``lockgate creds``: store, rotate and list the upstream credentials the gateway uses
(values go in encrypted; only names, types and versions come out).

    lockgate creds set NAME | creds rotate NAME | creds list

Federated and managed identity credentials hold no secret (the gateway signs its own
assertion, or the host hands out the token): ``set``/``rotate`` refuse them and say what
the cloud must trust instead; ``list`` says for every credential whether it holds one.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_group
from lockgate._cli_state import audit_now as _audit_now
from lockgate._cli_state import config_from as _config
from lockgate._cli_state import open_state as _state
from lockgate.config import FederatedCredential, LockgateConfig, ManagedIdentityCredential
from lockgate.errors import LockgateError

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands


def _read_secret(args: argparse.Namespace) -> str:
    if args.from_env:
        value = os.environ.get(args.from_env)
        if not value:
            raise LockgateError(f"environment variable {args.from_env} is empty or unset")
        return value.strip()
    if args.from_file:
        try:
            return Path(args.from_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LockgateError(f"cannot read {args.from_file}: {exc.strerror}") from None
    if sys.stdin.isatty():
        return getpass.getpass(f"value for {args.name}: ")
    return sys.stdin.read().strip()


def _check_credential_name(cfg: LockgateConfig, name: str) -> None:
    if cfg.credential(name) is None:
        known = ", ".join(c.name for c in cfg.credentials) or "none"
        raise LockgateError(f"{cfg.source}: no credential named {name!r} (known: {known})")


def _no_secret(cfg: LockgateConfig, name: str) -> str | None:
    """Why credential ``name`` holds no secret (for ``list`` and refusals), or None."""
    cred = cfg.credential(name)
    if isinstance(cred, FederatedCredential):
        return f"federated: {cred.provider}"
    if isinstance(cred, ManagedIdentityCredential):
        return "managed identity"
    return None


def _refuse_unstored(cfg: LockgateConfig, name: str) -> None:
    from lockgate.credentials.federation import trusted_as  # lazy: keeps the CLI quick

    cred = cfg.credential(name)
    if isinstance(cred, FederatedCredential):
        raise LockgateError(
            f"credential {name!r} is federated ({cred.provider}): there is nothing to store, "
            f"the gateway signs its own assertion; the cloud must trust {trusted_as(cfg, cred)}"
        )
    if isinstance(cred, ManagedIdentityCredential):
        raise LockgateError(
            f"credential {name!r} is the host's managed identity: there is nothing to store, "
            "the host hands out its token"
        )


def cmd_creds_set(args: argparse.Namespace, rotate: bool = False) -> int:
    from lockgate.state import State

    # Check the name and read the value before opening any state: a typo must not create
    # a data directory or a master key.
    cfg = _config(args)
    _check_credential_name(cfg, args.name)
    _refuse_unstored(cfg, args.name)  # before any prompt: there is no value to ask for
    value = _read_secret(args)
    if not value:
        raise LockgateError("refusing to store an empty credential")
    st = State(cfg)
    version = (st.credentials.rotate if rotate else st.credentials.set)(args.name, value)
    _audit_now(
        st,
        "credential_rotated" if rotate else "credential_set",
        resource=None,
        object=args.name,
        detail={"credential": args.name, "version": version},
    )
    verb = "rotated" if rotate else "stored"
    print(f"credential {args.name} {verb}: version {version} is current")
    if rotate:
        cred = st.config.credential(args.name)
        print(
            f"the previous version stays usable for {getattr(cred, 'overlap', 0)}s on upstream 401"
        )
    return 0


def cmd_creds_list(args: argparse.Namespace) -> int:
    st = _state(args)
    secretless = 0
    for c in st.config.credentials:
        why_none = _no_secret(st.config, c.name)
        if why_none is not None:
            secretless += 1
            print(f"{c.name:24} {c.type:26} no secret ({why_none})")
            continue
        versions = st.credentials.versions(c.name)
        if versions:
            v = versions[-1]
            print(f"{c.name:24} {c.type:26} version {v.version}  set {time.ctime(v.created_at)}")
        else:
            print(f"{c.name:24} {c.type:26} NOT SET (lockgate creds set {c.name})")
    if st.config.credentials:
        print(f"{secretless} of {len(st.config.credentials)} credentials hold no secret")
    secretless_resources = [
        r.name
        for r in st.config.resources
        if r.credential and _no_secret(st.config, r.credential) is not None
    ]
    if secretless_resources:
        print(f"resources served with no stored secret: {', '.join(secretless_resources)}")
    return 0


def add_creds_commands(sub: Subcommands) -> None:
    creds = add_group(sub, "creds", "upstream credentials")
    for name, fn, text in (
        (
            "set",
            cmd_creds_set,
            "store a credential (read from stdin, a prompt, --from-env or --from-file)",
        ),
        (
            "rotate",
            lambda a: cmd_creds_set(a, rotate=True),
            "new version, used at once; previous kept for the overlap",
        ),
    ):
        sp = add_command(creds, name, fn, text)
        sp.add_argument("name", metavar="NAME", help="one of the configuration's credentials")
        sp.add_argument("--from-env", metavar="VAR", help="read the value from this variable")
        sp.add_argument(
            "--from-file",
            metavar="PATH",
            help="read the value from this file (surrounding whitespace stripped)",
        )
    add_command(
        creds,
        "list",
        cmd_creds_list,
        "list credentials, whether each holds a secret and its current version (never values)",
    )
