"""``lockgate``: the command line.

    lockgate init DIR                      write a working config, policy, TLS and deployment secret
    lockgate serve [--workers N]           run the gateway (token service, engines, metrics)
    lockgate config check                  validate lockgate.yaml and the policy files it names
    lockgate policy check PRINCIPAL ACTION RESOURCE[/OBJECT] [--map-index N]
    lockgate policy lint | policy test FILE...
    lockgate policy suggest --dag D [--since 30d] [--out DIR] | policy unused [--since 30d] [--json]
    lockgate token revoke --jti J | --dag D [--run R] [--deployment N] | --deployment N
    lockgate token revoke --dag D | --deployment N --block   kill switch: no new token either
    lockgate token unblock --dag D | --deployment N
    lockgate token revocations
    lockgate keys rotate [--retire-after S] [--alg A] | keys list | keys retire --alg A
    lockgate creds set NAME | creds rotate NAME | creds list
    lockgate audit tail | audit search --dag D [--run R] [--decision deny] | audit verify
                                           (shared state: every replica; --local: this one)
    lockgate console link [--ttl S]        a one-time admin sign-in link to the console (/console)
    lockgate db upgrade | db check         the state's schema (SQLite files or PostgreSQL)
    lockgate demo [--secretless]           run the end-to-end demo on embedded defaults

The config file is ``--config``, else ``$LOCKGATE_CONFIG``, else ``./lockgate.yaml``.
Errors print one clear line (or a list of fields) to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate._cli_state import add_command, add_global_options, add_group
from lockgate._cli_state import config_from as _config
from lockgate.cli_alerts import add_alerts_commands
from lockgate.cli_audit import add_audit_commands
from lockgate.cli_console import add_console_commands
from lockgate.cli_creds import add_creds_commands
from lockgate.cli_db import add_db_commands
from lockgate.cli_keys import add_keys_commands
from lockgate.cli_policy_usage import add_policy_usage_commands
from lockgate.cli_token import add_token_commands
from lockgate.config import LockgateConfig
from lockgate.errors import LockgateError

if TYPE_CHECKING:  # the server and policy packages load lazily to keep the CLI quick
    from lockgate.policy import PolicySet


# -- init / serve / config ------------------------------------------------------------------
# The starter resource's upstream when init is given none: the port the demo's orders API
# uses, where nothing listens unless `lockgate demo` runs.
DEMO_UPSTREAM = "http://127.0.0.1:8480"
# What --upstream may be: an http(s) URL the starter YAML can hold unquoted.
_UPSTREAM_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/%\-]*)?$")


def cmd_init(args: argparse.Namespace) -> int:
    from lockgate.scaffold import write_init

    upstream = DEMO_UPSTREAM if args.upstream is None else args.upstream
    if not _UPSTREAM_URL.match(upstream):
        raise LockgateError(f"--upstream must be an http:// or https:// URL, not {upstream!r}")
    if args.issuer is not None and not args.issuer.startswith("https://"):
        raise LockgateError(f"--issuer must be the https:// URL of the issuer, not {args.issuer!r}")
    written = write_init(
        Path(args.dir),
        force=args.force,
        tls=not args.no_tls,
        upstream=upstream,
        issuer=args.issuer,
        audience=args.audience,
    )
    d = Path(args.dir)
    scheme = "http" if args.no_tls else "https"
    ca_line = "" if args.no_tls else f',\n     "ca_file": "{written["tls_ca"]}"'
    print(f"Wrote a working Lockgate configuration in {d}/:")
    for label, path in written.items():
        print(f"  {label:20} {path}")
    where = f"`upstream:` and `routes:` of resources in {written['config']}"
    if args.upstream is not None:
        print(f"\norders-api forwards to {upstream} with routes for /orders paths:")
        print(f"edit `routes:` of resources in {written['config']} to match your API.")
    else:
        print(
            f"\norders-api forwards to {upstream}, the demo orders API, which only `lockgate "
            f"demo` starts:\nuntil you point it at your API ({where},\nor `lockgate init "
            "--upstream URL`), requests through the gateway answer 502."
        )
    print(
        "\nNext:\n"
        f"  lockgate creds set orders-api-key -c {d}/lockgate.yaml  # the upstream's secret, "
        "from stdin\n"
        f"  lockgate serve -c {d}/lockgate.yaml"
    )
    if args.issuer is not None:
        print(
            f"Airflow workers prove 'prod' with a token from {args.issuer} (audience "
            f"{args.audience!r}): nothing stored on them.\n"
            f"Their airflow.cfg: {written['airflow_workers']} (mount a projected "
            "service-account token with that audience at the path it names)."
        )
    else:
        print(
            "Airflow workers (airflow.cfg):\n"
            "  [workers]\n"
            "  secrets_backend = lockgate.airflow.secrets.LockgateSecretsBackend\n"
            f'  secrets_backend_kwargs = {{"url": "{scheme}://127.0.0.1:8470", '
            '"deployment": "prod",\n'
            f'     "client_secret_file": "{written["deployment_secret"]}"{ca_line}}}\n'
            f"On Kubernetes, prove 'prod' with no stored secret instead: "
            f"`lockgate init --issuer URL` (or the commented oidc_issuers entry in "
            f"{written['config']}; every form: {written['airflow_workers']})."
        )
    if not args.no_tls:
        bundle = written["worker_bundle"]
        print(
            "Workers trust the gateway with a bundle that ADDS its CAs to the system store "
            "(the system CAs, the dev CA, the forward proxy's interception CA for Data "
            "Factory):\n"
            f"  export REQUESTS_CA_BUNDLE={bundle} SSL_CERT_FILE={bundle}"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # SIGHUP ends a process by default: one sent while the gateway starts (a reload right
    # after a start) must not kill it. The serving loop (or the supervisor) takes it over.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from lockgate.server import run

    if args.workers < 1:
        raise LockgateError("--workers must be at least 1")
    cfg = _config(args)
    for problem in cfg.issuer_problems():  # refused at run time; said here
        print(f"lockgate: warning: {cfg.source}: {problem}", file=sys.stderr)
    run(cfg, workers=args.workers)
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """The configuration, then the policy files as the gateway would load them: a policy the
    gateway would refuse (parse error, unknown resource) fails the check, exit 2."""
    from lockgate.policy import policy_problems

    cfg = _config(args)
    problems = policy_problems(cfg.policies, cfg.policy_files(), {r.name for r in cfg.resources})
    if problems:
        for problem in problems:
            print(f"lockgate: {problem}", file=sys.stderr)
        print(f"lockgate: {cfg.source}: {len(problems)} policy problem(s)", file=sys.stderr)
        return 2
    trust = (
        cfg.issuer_problems()
        + _notifier_problems(cfg)
        + _tracing_problems(cfg)
        + _mirror_problems(cfg)
    )
    if trust:
        for problem in trust:
            print(f"lockgate: {cfg.source}: {problem}", file=sys.stderr)
        return 2
    print(
        f"{cfg.source}: ok — {len(cfg.deployments)} deployment(s), {len(cfg.resources)} "
        f"resource(s), {len(cfg.credentials)} credential(s), "
        f"{len(cfg.policy_files())} policy file(s)"
    )
    return 0


def _notifier_problems(cfg: LockgateConfig) -> list[str]:
    """Alert notifiers the gateway would leave out (secret unreadable, URL not https)."""
    from lockgate.alerts.senders import Notifier

    base = cfg.source.parent if cfg.source is not None else Path.cwd()
    problems: list[str] = []
    for i, n in enumerate(cfg.alerts.notifiers):
        try:
            Notifier(n, console_url=cfg.alerts.console_url, source=str(cfg.source), config_dir=base)
        except LockgateError as exc:
            problems.append(f"alerts.notifiers[{i}] ({n.name}): {exc}")
    return problems


def _tracing_problems(cfg: LockgateConfig) -> list[str]:
    """What ``serve`` refuses to start with in ``tracing``: an export headers file it cannot
    read or parse (named by path and line, never by its values)."""
    t = cfg.tracing
    if not (t.enabled and t.otlp_endpoint):
        return []
    try:
        t.otlp_headers()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc)
        return [f"tracing.otlp_headers_file: {why}"]
    return []


def _mirror_problems(cfg: LockgateConfig) -> list[str]:
    """Audit mirrors the gateway could not write: it would start and refuse every allowed
    request (fail closed). The nearest existing ancestor must be a writable directory."""
    problems: list[str] = []
    for field, path in (("jsonl", cfg.audit.jsonl), ("ocsf", cfg.audit.ocsf)):
        if path is None:
            continue
        if path.exists():
            if path.is_dir():
                problems.append(f"audit.{field}: {path} is a directory")
            elif not os.access(path, os.W_OK):
                problems.append(f"audit.{field}: {path} is not writable")
            continue
        ancestor = path.parent  # serve creates the directories missing below it
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            problems.append(f"audit.{field}: {ancestor} is not a directory")
        elif not os.access(ancestor, os.W_OK):
            problems.append(f"audit.{field}: {ancestor} is not writable")
    return problems


# -- policy ---------------------------------------------------------------------------------
def _policy_set(args: argparse.Namespace) -> tuple[PolicySet, LockgateConfig]:
    from lockgate.policy import load_policy_files

    cfg = _config(args)
    return load_policy_files(cfg.policy_files(), {r.name for r in cfg.resources}), cfg


def cmd_policy_check(args: argparse.Namespace) -> int:
    from lockgate.policy import cmd_check

    ps, cfg = _policy_set(args)
    code, text = cmd_check(
        ps,
        args.principal,
        args.action,
        args.target,
        known_resources={r.name for r in cfg.resources},
        deployments={d.name: d.dags for d in cfg.deployments},
        database_resources={r.name for r in cfg.resources if r.kind != "http"},
        map_index=args.map_index,
    )
    print(text, file=sys.stderr if code == 2 else sys.stdout)
    return code


def cmd_policy_lint(args: argparse.Namespace) -> int:
    from lockgate.config import HttpResource
    from lockgate.policy import cmd_lint

    ps, cfg = _policy_set(args)
    # resources naming one upstream: a quota on one name must count the other (quota-alias)
    upstreams = {r.name: str(r.upstream) for r in cfg.resources if isinstance(r, HttpResource)}
    code, text = cmd_lint(
        ps, {r.name for r in cfg.resources}, strict=args.strict, upstreams=upstreams
    )
    print(text)
    return code


def cmd_policy_test(args: argparse.Namespace) -> int:
    from lockgate.policy import cmd_test

    ps, _ = _policy_set(args)
    worst = 0
    for f in args.files:
        code, text = cmd_test(ps, Path(f))
        print(text)
        worst = max(worst, code)
    return worst


# -- keys -------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    if args.secretless:
        if args.no_airflow:
            raise LockgateError("--secretless runs its DAGs: it takes no --no-airflow")
        from lockgate.demo.run_secretless import main as secretless_main

        return secretless_main(Path(args.dir or "demo-secretless"))
    from lockgate.demo.run import main as demo_main

    return demo_main(Path(args.dir or "demo"), airflow=not args.no_airflow)


# -- parser ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Every verb and flag; docs/cli.md's reference is generated from it (lockgate.cli_docs)."""
    p = argparse.ArgumentParser(
        prog="lockgate", description="Identity-aware access gateway for data pipelines."
    )
    add_global_options(p, top_level=True)
    sub = p.add_subparsers(dest="command", required=True)

    sp = add_command(sub, "init", cmd_init, "write a working example configuration into DIR")
    sp.add_argument("dir", metavar="DIR", help="directory to write into (created if missing)")
    sp.add_argument(
        "--force",
        action="store_true",
        help="overwrite an existing lockgate.yaml (and make a new secret and TLS material)",
    )
    sp.add_argument("--no-tls", action="store_true", help="plain HTTP listeners (development only)")
    sp.add_argument(
        "--upstream",
        metavar="URL",
        help="the URL of the API the starter resource orders-api forwards to "
        f"(default: {DEMO_UPSTREAM}, the demo orders API, which only `lockgate demo` starts)",
    )
    sp.add_argument(
        "--issuer",
        metavar="URL",
        help="the workers' workload-identity issuer (a Kubernetes cluster's service-account "
        "issuer URL): 'prod' is proven by its tokens and no deployment secret is written",
    )
    sp.add_argument(
        "--audience",
        default="lockgate",
        metavar="AUD",
        help="the audience of the workers' tokens, with --issuer (default: lockgate)",
    )
    sp = add_command(sub, "serve", cmd_serve, "run the gateway")
    sp.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes sharing the HTTP ports (SO_REUSEPORT) and one audit writer; "
        "worker 0 alone serves the control plane and the CQL and PostgreSQL listeners, and "
        "its /metrics adds up every worker's (prometheus_client multiprocess files in "
        "<data_dir>/metrics)",
    )

    cfg = add_group(sub, "config", "configuration commands")
    add_command(
        cfg, "check", cmd_config_check, "validate the configuration file and its policy files"
    )

    pol = add_group(sub, "policy", "policy commands")
    sp = add_command(pol, "check", cmd_policy_check, "print the decision and the deciding rule")
    sp.add_argument("principal", metavar="PRINCIPAL", help="who asks: airflow:DEPLOYMENT/DAG/TASK")
    sp.add_argument(
        "action", metavar="ACTION", choices=["read", "write", "admin", "run"], help="what is done"
    )
    sp.add_argument(
        "target",
        metavar="RESOURCE[/OBJECT]",
        help="a resource of the catalog, and the object inside it after the first '/'",
    )
    sp.add_argument(
        "--map-index",
        type=int,
        default=-1,
        metavar="N",
        help="the map index of the asking instance of a mapped task; -1: not mapped",
    )
    sp = add_command(pol, "lint", cmd_policy_lint, "report overbroad, shadowed and dangling rules")
    sp.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    sp = add_command(
        pol, "test", cmd_policy_test, "run YAML policy test cases; exit 1 on a mismatch"
    )
    sp.add_argument("files", nargs="+", metavar="FILE", help="policy test file")
    add_policy_usage_commands(pol)

    add_token_commands(sub)
    add_db_commands(sub)

    add_keys_commands(sub)
    add_alerts_commands(sub)
    add_console_commands(sub)
    add_creds_commands(sub)

    add_audit_commands(sub)

    sp = add_command(sub, "demo", cmd_demo, "run the end-to-end demo on embedded defaults")
    sp.add_argument(
        "--dir",
        metavar="DIR",
        help="working directory for the demo (default: demo, with --secretless demo-secretless)",
    )
    sp.add_argument("--no-airflow", action="store_true", help="skip the Airflow DAG runs")
    sp.add_argument(
        "--secretless",
        action="store_true",
        help="no stored secret anywhere: workers proven by a service-account token, every "
        "upstream federated; prints what the clouds saw and a secret scan's verdict",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except LockgateError as exc:
        print(f"lockgate: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # existing init target, unwritable data_dir ...: one line, no trace
        print(f"lockgate: {exc}", file=sys.stderr)
        return 2
