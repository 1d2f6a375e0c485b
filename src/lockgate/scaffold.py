"""``lockgate init DIR``: write a working configuration to start from.

It writes ``lockgate.yaml``, a team policy with its tests, development TLS material, the
Airflow workers' settings (``airflow-workers.cfg``) and, unless told the workers' issuer,
a client secret for the ``prod`` deployment (0600; the config holds only its SHA-256). The
upstream resource points at the local demo API (``lockgate demo-upstream``) so the result
runs as written; edit ``resources`` for a real service.

Two ways for workers to prove they are ``prod``, the secretless one offered first:

- **Workload identity** (no secret on any worker): the gateway trusts the cluster's
  service-account issuer (an ``oidc_issuers`` entry: issuer, audience, namespace and
  service account), and the secrets backend reads the pod's projected token
  (``identity_token_file``). ``write_init(issuer=...)`` writes that form live, with no
  ``proof:`` and no secret file; otherwise it is in the files as a commented block to fill
  in.
- **Client secret**: for workers with no workload identity (a laptop, a VM outside any
  cloud identity, the local demo): ``proof: client_secret`` and ``client_secret_file``.

With TLS it also writes ``tls/worker-bundle.pem`` (:func:`write_trust_bundle`): the
system's trust store, the gateway's CA and the interception CA in one file. Workers point
``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` at it, which *adds* trust in the gateway: those
variables replace the trust store, so a file holding only the gateway's CA would make
every other HTTPS call of the task fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from lockgate.tlsgen import write_dev_ca, write_dev_tls

# Where the system's CA certificates are when certifi (what requests trusts) is absent:
# Debian/Ubuntu/Alpine, then Fedora/RHEL.
SYSTEM_CA_FILES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
)

CONFIG_TEMPLATE = """\
# Lockgate configuration. Relative paths are relative to this file.
data_dir: ./data

listeners:
  control:                      # token service, JWKS, /metrics, /healthz, /readyz
    host: 127.0.0.1
    port: {control_port}
    {control_tls}
  http:                         # HTTP engine: https://HOST:PORT/<resource>/<path>
    host: 127.0.0.1
    port: {http_port}
    {http_tls}
  # forward_proxy:              # HTTPS_PROXY for SDKs whose endpoint is fixed (Azure ARM);
  #   host: 127.0.0.1           # only hosts a resource lists in `intercept` are served
  #   port: 8473
  #   ca: {{cert: tls/proxy-ca.pem, key: tls/proxy-ca.key}}   # workers trust tls/proxy-ca.pem

tokens:
  default_ttl: 900              # 15 minutes unless a policy's max_token_ttl says less
  max_ttl: 3600

# Who may ask for tokens, and how its workers prove it (airflow-workers.cfg says what the
# workers set for each way):
#  1. Workload identity, no secret on any worker: use it wherever workers have one
#     (Kubernetes, AKS/EKS/GKE, Azure workload identity, SPIFFE/SPIRE). Lockgate trusts
#     the cluster's service-account issuer; each worker pod mounts a projected
#     service-account token whose audience is Lockgate's. {issuer_hint}
#  2. A client secret: only for workers with no workload identity (a laptop, a VM outside
#     any cloud identity, the local demo).
{oidc_issuers}
deployments:
  - name: prod                  # one Airflow installation Lockgate trusts
{proof}    dags: ["finance_*", "orders_*", "marketing_*"]

resources:
  - name: orders-api
    kind: http
    upstream: {upstream}
    credential: orders-api-key
    conn_id: orders_api
    routes:                     # the object is the normalised path, e.g. /orders/o-1001
      - {{method: GET, path: "/orders", action: read}}
      - {{method: GET, path: "/orders/**", action: read}}
      - {{method: POST, path: "/orders", action: write}}
      - {{method: PUT, path: "/orders/**", action: write}}

credentials:
  - name: orders-api-key        # set with: lockgate creds set orders-api-key
    type: static
    overlap: 600

policies: ["policies/*.yaml"]

audit:
  write_timeout: 1.0
"""

POLICY_TEMPLATE = """\
# Team policy: deny by default; an explicit deny beats any allow.
rules:
  - id: finance-read-orders
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [read]
    resources: [orders-api]
    objects: ["/orders", "/orders/**"]
    conditions:
      max_token_ttl: 900
  - id: orders-load-writes
    effect: allow
    principals: ["airflow:prod/orders_load/*"]
    actions: [read, write]
    resources: [orders-api]
    objects: ["/orders", "/orders/**"]
  - id: no-admin-on-orders
    effect: deny
    principals: ["*"]
    actions: [admin]
    resources: [orders-api]
"""

POLICY_TESTS_TEMPLATE = """\
tests:
  - name: finance DAGs read orders
    principal: airflow:prod/finance_daily/read_orders
    action: read
    resource: orders-api
    object: /orders
    expect: allow
    rule: finance-read-orders
  - name: finance DAGs cannot write orders
    principal: airflow:prod/finance_daily/read_orders
    action: write
    resource: orders-api
    object: /orders
    expect: deny
  - name: marketing cannot read orders
    principal: airflow:prod/marketing_daily/peek
    action: read
    resource: orders-api
    object: /orders
    expect: deny
"""


# The issuer entry for a Kubernetes cluster's service accounts (live or commented out).
OIDC_ISSUER_TEMPLATE = """\
oidc_issuers:
  - issuer: {issuer}   # see `kubectl get --raw /.well-known/openid-configuration`
    audience: {audience}   # the projected token's audience (the pod spec's)
    deployment: prod
    subjects: ["system:serviceaccount:airflow:*"]   # system:serviceaccount:<namespace>:<sa>
    claims:                     # every one must match (globs); the namespace and account
      kubernetes.io.namespace: airflow
      kubernetes.io.serviceaccount.name: [airflow-worker, airflow-triggerer]
    # ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt   # the cluster's CA
    algorithms: [RS256, ES256]
"""
CLIENT_SECRET_PROOF = """\
    proof:                      # the client-secret way (2); drop it once workers use (1)
      type: client_secret
      secret_sha256: "{secret_sha256}"   # of the secret in deployment-prod.secret
"""  # noqa: S105 - a template: the hash is filled in
DEFAULT_AUDIENCE = "lockgate"
# Where the worker pod mounts its projected token (a serviceAccountToken volume source).
TOKEN_PATH = "/var/run/secrets/lockgate/token"  # noqa: S105 - a path, no token

# ``[workers]`` settings of airflow.cfg: the secretless form first, the client secret after.
WORKERS_TEMPLATE = """\
# Airflow workers' settings for Lockgate ([workers] of airflow.cfg, or the environment
# variables AIRFLOW__WORKERS__SECRETS_BACKEND and AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS).
# Exactly one proof: workload identity wherever workers have one, a client secret only
# where they have none.
[workers]
secrets_backend = lockgate.airflow.secrets.LockgateSecretsBackend

# 1. Workload identity: no secret on the worker.
#    Kubernetes: the pod's projected service-account token
#    ({state}). In the worker pod spec: a volume
#    `projected: {{sources: [{{serviceAccountToken: {{audience: {audience},
#    expirationSeconds: 3600, path: token}}}}]}}` mounted at {token_dir}.
{kubernetes}
#    Azure workload identity (AKS): prefer the projected token above (Lockgate's own
#    audience): the webhook's token file is also an Entra credential. Where no volume can
#    be added: the oidc_issuers entry names the cluster's OIDC issuer URL and audience
#    api://AzureADTokenExchange.
# {azure}
#    SPIFFE/SPIRE: a JWT-SVID from the agent's Workload API socket ($SPIFFE_ENDPOINT_SOCKET);
#    the oidc_issuers entry: issuer spiffe://<trust domain>, jwks_file: the trust bundle.
# {spiffe}

# 2. Client secret: workers with no workload identity (a laptop, a VM, the local demo).
{client_secret}
"""


def worker_settings(
    url: str, *, ca_file: Path | None, secret_file: Path | None, audience: str = DEFAULT_AUDIENCE
) -> str:
    """The ``airflow-workers.cfg`` text: ``secrets_backend_kwargs`` for each proof, the
    secretless ones first; live (uncommented) is the one the configuration accepts now: the
    projected token without a client secret, else the client secret."""
    base = {"url": url, "deployment": "prod"}
    tls = {"ca_file": str(ca_file)} if ca_file else {}

    def kwargs(proof: dict[str, str]) -> str:
        return "secrets_backend_kwargs = " + json.dumps({**base, **proof, **tls})

    kubernetes = kwargs({"identity_token_file": TOKEN_PATH})
    if secret_file is None:
        state, client_secret = "the configuration trusts its issuer", "# (none: not configured)"
    else:
        state = "once oidc_issuers in lockgate.yaml is filled in"
        kubernetes = "# " + kubernetes
        client_secret = kwargs({"client_secret_file": str(secret_file)})
    return WORKERS_TEMPLATE.format(
        state=state,
        audience=audience,
        token_dir=str(Path(TOKEN_PATH).parent),
        kubernetes=kubernetes,
        azure=kwargs({"identity_token_env": "AZURE_FEDERATED_TOKEN_FILE"}),
        spiffe=kwargs({"spiffe_socket": "env", "spiffe_audience": audience}),
        client_secret=client_secret,
    )


def _commented(text: str) -> str:
    return "".join(f"# {line}" if line.strip() else line for line in text.splitlines(True))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def system_ca_file() -> Path | None:
    """The system trust store as one PEM file: certifi's (what ``requests`` uses unless
    told otherwise), else the operating system's; None when neither exists."""
    try:
        import certifi
    except ImportError:
        certifi_file = None
    else:
        certifi_file = Path(certifi.where())
    for candidate in (certifi_file, *SYSTEM_CA_FILES):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def write_trust_bundle(path: Path, extra_cas: list[Path]) -> Path:
    """Write ``path``: the system trust store followed by ``extra_cas`` (the gateway's CA,
    the interception CA). Trust is added to what the system trusts, never put in its place."""
    system = system_ca_file()
    if system is None:
        raise FileNotFoundError(
            "no system CA store found (certifi or " + ", ".join(map(str, SYSTEM_CA_FILES)) + ")"
        )
    parts = [system.read_text(encoding="utf-8")]
    for ca in extra_cas:
        parts.append(f"# Lockgate: {ca.name}\n{ca.read_text(encoding='utf-8')}")
    partial = path.with_suffix(".tmp")
    partial.write_text("\n".join(p.rstrip("\n") + "\n" for p in parts), encoding="utf-8")
    partial.replace(path)
    return path


def write_init(
    directory: Path,
    *,
    force: bool = False,
    tls: bool = True,
    control_port: int = 8470,
    http_port: int = 8471,
    upstream: str = "http://127.0.0.1:8480",
    issuer: str | None = None,
    audience: str = DEFAULT_AUDIENCE,
) -> dict[str, Path]:
    """Write a working example configuration into ``directory``; return what was written.

    ``issuer``: the workers' Kubernetes service-account issuer; then ``prod`` is proven by
    its tokens (for ``audience``) only and no client secret is written."""
    directory = directory.resolve()
    config_path = directory / "lockgate.yaml"
    if config_path.exists() and not force:
        raise FileExistsError(f"{config_path} exists; pass --force to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policy-tests").mkdir(exist_ok=True)
    written: dict[str, Path] = {}
    secret_path: Path | None = None
    proof = ""
    if issuer is None:
        secret = secrets.token_urlsafe(32)
        secret_path = directory / "deployment-prod.secret"
        _write_private(secret_path, secret + "\n")
        written["deployment_secret"] = secret_path
        proof = CLIENT_SECRET_PROOF.format(
            secret_sha256=hashlib.sha256(secret.encode()).hexdigest()
        )
    issuer_entry = OIDC_ISSUER_TEMPLATE.format(
        issuer=issuer or "https://kubernetes.default.svc.cluster.local", audience=audience
    )
    tls_line = ""
    if tls:
        paths = write_dev_tls(directory / "tls")
        written.update({f"tls_{k}": v for k, v in paths.items()})
        # The interception CA for the forward proxy (Azure ARM); its key stays here, 0600.
        proxy_ca = write_dev_ca(directory / "tls")
        written.update({f"proxy_ca_{k}": v for k, v in proxy_ca.items()})
        written["worker_bundle"] = write_trust_bundle(
            directory / "tls" / "worker-bundle.pem", [paths["ca"], proxy_ca["cert"]]
        )
        tls_line = "tls: {cert: tls/cert.pem, key: tls/key.pem}"
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            control_port=control_port,
            http_port=http_port,
            control_tls=tls_line,
            http_tls=tls_line,
            upstream=upstream,
            proof=proof,
            oidc_issuers=issuer_entry if issuer else _commented(issuer_entry),
            issuer_hint=(
                "Fill in and uncomment\n#     oidc_issuers below, then drop `proof:`."
                if issuer is None
                else "The entry below is live."
            ),
        ),
        encoding="utf-8",
    )
    written["config"] = config_path
    scheme = "https" if tls else "http"
    workers = directory / "airflow-workers.cfg"
    workers.write_text(
        worker_settings(
            f"{scheme}://127.0.0.1:{control_port}",
            ca_file=written.get("tls_ca"),
            secret_file=secret_path,
            audience=audience,
        ),
        encoding="utf-8",
    )
    written["airflow_workers"] = workers
    (directory / "policies" / "orders.yaml").write_text(POLICY_TEMPLATE, encoding="utf-8")
    (directory / "policy-tests" / "orders.yaml").write_text(POLICY_TESTS_TEMPLATE, encoding="utf-8")
    written["policy"] = directory / "policies" / "orders.yaml"
    written["policy_tests"] = directory / "policy-tests" / "orders.yaml"
    return written
