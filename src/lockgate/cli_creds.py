"""``lockgate creds``: store, rotate and list the upstream credentials the gateway uses
(values go in encrypted; only names, types and versions come out).

    lockgate creds set NAME | creds rotate NAME | creds list

Federated and managed identity credentials hold no secret (the gateway signs its own
assertion, or the host hands out the token): ``set``/``rotate`` refuse them and say what
the cloud must trust instead; ``list`` says for every credential whether it holds one.

Vault-held credentials (``azure_key_vault``, ``vault_kv``) are rotated in the vault:
``set``/``rotate`` refuse them and say how, except that a ``vault_kv`` AppRole login without
``secret_id_file`` stores its secret id here. ``list`` shows where each is held (URL, secret,
version) and when a gateway last fetched it, never the value.
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
from lockgate.config.credentials import KeyVaultCredential, VaultCredential
from lockgate.credentials.describe import (
    CredentialFacts,
    describe,
    stores_secret_id,
    vault_name,
)
from lockgate.errors import LockgateError

if TYPE_CHECKING:
    from lockgate._cli_state import Subcommands
    from lockgate.state import State


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


def _rotate_in_vault_hint(cred: VaultCredential) -> str:
    if isinstance(cred, KeyVaultCredential):
        vault = cred.vault_url.removeprefix("https://").split(".", 1)[0]
        return f"az keyvault secret set --vault-name {vault} --name {cred.secret} --file <path>"
    mount = f"-mount={cred.mount} " if cred.mount != "secret" else ""
    ns = f"VAULT_NAMESPACE={cred.namespace} " if cred.namespace else ""
    return f"{ns}vault kv patch {mount}{cred.path} {cred.field}=@<path>"


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
    if isinstance(cred, VaultCredential) and not stores_secret_id(cred):
        pinned = (
            "; it pins version " + str(cred.version) + ": change `version` in the file too"
            if cred.version
            else f"; the gateway uses the new version within {cred.ttl}s, the previous one "
            f"for {cred.overlap}s more"
        )
        raise LockgateError(
            f"credential {name!r} is held in {vault_name(cred)} ({cred.held_at}): rotate it "
            f"in the vault, e.g. `{_rotate_in_vault_hint(cred)}`{pinned}"
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
    try:
        return _store(st, args.name, value, rotate=rotate)
    finally:
        st.close()  # its database pools: a command leaves nothing open behind it


def _store(st: State, name: str, value: str, *, rotate: bool) -> int:
    version = (st.credentials.rotate if rotate else st.credentials.set)(name, value)
    _audit_now(
        st,
        "credential_rotated" if rotate else "credential_set",
        resource=None,
        object=name,
        detail={"credential": name, "version": version},
    )
    verb = "rotated" if rotate else "stored"
    what = "the AppRole secret id of " if stores_secret_id(st.config.credential(name)) else ""
    print(f"{what}credential {name} {verb}: version {version} is current")
    if rotate:
        cred = st.config.credential(name)
        print(
            f"the previous version stays usable for {getattr(cred, 'overlap', 0)}s on upstream 401"
        )
    return 0


def cmd_creds_list(args: argparse.Namespace) -> int:
    st = _state(args)
    try:
        return _list(st)
    finally:
        st.close()


def _list(st: State) -> int:
    report = describe(st.config, st.credentials)
    for c in report.credentials:
        if c.held_at is not None:  # vault-held
            print(f"{c.name:24} {c.type:26} {_vault_line(c)}")
            if not c.secret_id_only:
                continue
        if c.no_secret is not None:
            print(f"{c.name:24} {c.type:26} no secret ({c.no_secret})")
            continue
        what = "AppRole secret id " if c.secret_id_only else ""
        if c.current is not None:
            v = c.current
            print(
                f"{c.name:24} {c.type:26} {what}version {v.version}  set {time.ctime(v.created_at)}"
            )
        else:
            print(f"{c.name:24} {c.type:26} {what}NOT SET (lockgate creds set {c.name})")
    if report.credentials:
        print(f"{report.holding_no_secret} of {len(report.credentials)} credentials hold no secret")
    if served := report.served_without_stored_secret:
        print(f"resources served with no stored secret: {', '.join(served)}")
    return 0


def _vault_line(cred: CredentialFacts) -> str:
    """Where a vault-held credential lives and when a gateway last fetched which version."""
    where = f"held in {cred.held_in}: {cred.held_at}"
    if cred.fetched is None:
        return f"{where}  not fetched yet"
    fetched = cred.fetched
    return f"{where}  version {fetched.vault_version} fetched {time.ctime(fetched.fetched_at)}"


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
