"""An attacker's pass over the workload-identity proofs (RFC 8693 subject tokens) and the
worker's token sources, against the real control listener, token service, rate limits and
audit trail: each test is a hole that was open (or a door checked to be shut), and each
refusal must be audited with its reason and without the token."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate.audit import AuditRow
from lockgate.config import OidcIssuer
from lockgate.demo.standins.kubernetes import FakeClusterIssuer, start
from lockgate.errors import AuthenticationError
from lockgate.identity.oidc import OidcVerifier
from lockgate.server import Gateway
from lockgate.tlsgen import write_dev_tls
from tests.control._stack import basic, deployment, running_gateway
from tests.fakes.spiffe_workload_api import FakeWorkloadApi

AUDIENCE = "https://lockgate.example"
LOCKGATE = "http://lockgate.test"
SECRET = "attack-prod-secret-Qw5"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
TASK = {"dag_id": "etl", "task_id": "load", "run_id": "r1", "try_number": "1", "resource": "api"}
POLICY = """\
rules:
  - id: everyone
    effect: allow
    principals: ["airflow:*/*/*"]
    actions: [read]
    resources: ["*"]
"""
PK_KEY = Ed25519PrivateKey.generate()
# The entry a careful operator writes: the namespace and the service accounts pinned.
PINNED = {
    "subjects": ["system:serviceaccount:airflow:*"],
    "claims": {"kubernetes.io.namespace": "airflow"},
}


@pytest.fixture
async def cluster() -> AsyncIterator[FakeClusterIssuer]:
    fake = FakeClusterIssuer()
    runner = await start(fake)
    yield fake
    await runner.cleanup()


def entry(cluster: FakeClusterIssuer, deployment: str = "edge", **fields: Any) -> dict[str, Any]:
    return {"issuer": cluster.issuer, "audience": AUDIENCE, "deployment": deployment,
            "algorithms": ["RS256"], **PINNED, **fields}  # fmt: skip


@asynccontextmanager
async def gateway(
    tmp_path: Path, issuers: list[dict[str, Any]], **rate_limit: float
) -> AsyncIterator[Gateway]:
    """The real gateway: "prod" proven by a client secret, "pk" by a private-key JWT
    assertion (:data:`PK_KEY`), "edge" by workload tokens only."""
    pem = PK_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "pk.pem").write_bytes(pem)
    pk = {"name": "pk", "dags": ["*"],
          "proof": {"type": "private_key_jwt", "public_key": str(tmp_path / "pk.pem")}}  # fmt: skip
    async with running_gateway(
        tmp_path,
        policy=POLICY,
        deployments=[deployment("prod", SECRET), {"name": "edge", "dags": ["*"]}, pk],
        resources=[{"name": "api", "kind": "http", "upstream": "http://127.0.0.1:9"}],
        oidc_issuers=issuers,
        issuer=LOCKGATE,
        tokens={"rate_limit": rate_limit},
    ) as gw:
        yield gw


async def post(gw: Gateway, headers: dict[str, str] | None = None, **form: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gw.control_port}/v1/token"
    async with aiohttp.ClientSession() as s, s.post(url, data=form, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def exchange(gw: Gateway, subject_token: str, **extra: str) -> tuple[int, Any]:
    return await post(gw, grant_type=EXCHANGE, subject_token=subject_token,
                      subject_token_type=JWT_TYPE, **{**TASK, **extra})  # fmt: skip


def last_refusal(gw: Gateway) -> AuditRow:
    gw.audit.flush(5.0)
    rows = [row for row in gw.audit.search() if row.decision == "deny"]
    assert rows, "no refusal recorded"
    return rows[-1]


def assert_refused(gw: Gateway, answer: tuple[int, Any], reason: str, token: str) -> None:
    status, body = answer
    assert status == 400 and body["error"] == "invalid_grant", body
    record = last_refusal(gw)
    assert record.reason == reason
    assert token not in json.dumps(record.to_dict(), default=str)  # never the token
    assert token.split(".")[1] not in json.dumps(body)


def pod_token(cluster: FakeClusterIssuer, **claims: Any) -> str:
    """A token the cluster's key signs with these claims over a worker's usual ones."""
    now = int(time.time())
    base: dict[str, Any] = {
        "aud": [AUDIENCE], "iss": cluster.issuer, "iat": now, "nbf": now, "exp": now + 600,
        "sub": "system:serviceaccount:airflow:airflow-worker",
        "kubernetes.io": {"namespace": "airflow", "serviceaccount": {"name": "airflow-worker"}},
    }  # fmt: skip
    key = cluster._keys[-1]
    return key.sign({"alg": key.algorithm, "kid": key.kid}, {**base, **claims})


# -- claims ------------------------------------------------------------------------------------


async def test_a_claim_path_that_reads_two_ways_is_refused(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """An issuer that lets a workload add a claim of its own (a user attribute of an IdP,
    a custom claim) could set a top-level ``"kubernetes.io.namespace"`` beside the real
    nested one: which one a dotted matcher reads must not be the attacker's choice."""
    lax = entry(cluster, subjects=["system:serviceaccount:*"])
    async with gateway(tmp_path, [lax]) as gw:
        honest = pod_token(cluster)
        assert (await exchange(gw, honest))[0] == 200
        forged = pod_token(
            cluster,
            sub="system:serviceaccount:kube-system:attacker",
            **{"kubernetes.io": {"namespace": "kube-system"}, "kubernetes.io.namespace": "airflow"},
        )
        answer = await exchange(gw, forged)
        assert_refused(gw, answer, "oidc_claim_not_allowed:kubernetes.io.namespace", forged)
        # the same two readings the other way round: refused alike, whichever is "right"
        mirrored = pod_token(cluster, **{"kubernetes.io.namespace": "kube-system"})
        assert (await exchange(gw, mirrored))[0] == 400


# -- audiences ---------------------------------------------------------------------------------


async def test_a_token_also_addressed_to_another_party_is_refused(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """A token for [Lockgate, another service] is in that other service's hands too: it
    could replay it here and mint for the deployment."""
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        shared = pod_token(cluster, aud=[AUDIENCE, "https://metrics-sink.example"])
        answer = await exchange(gw, shared)
        assert_refused(gw, answer, "oidc_foreign_audience", shared)
        # a string audience and a list of only ours are as good as ever
        assert (await exchange(gw, pod_token(cluster, aud=AUDIENCE)))[0] == 200
        assert (await exchange(gw, pod_token(cluster, aud=[AUDIENCE, AUDIENCE])))[0] == 200


# -- entries that pin nothing ------------------------------------------------------------------


async def test_an_entry_that_pins_no_subject_takes_no_token(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """Any pod of the cluster can ask the API server for a token of any audience
    (TokenRequest on its own service account): an entry with the default ``subjects: ["*"]``
    and no claims would make every workload of the cluster the Airflow deployment."""
    unpinned = {"issuer": cluster.issuer, "audience": AUDIENCE, "deployment": "edge"}
    intruder = cluster.token(namespace="default", service_account="crypto-miner",
                             audience=AUDIENCE)  # fmt: skip
    async with gateway(tmp_path, [unpinned]) as gw:
        assert_refused(gw, await exchange(gw, intruder), "oidc_entry_unpinned", intruder)
    for n, globs in enumerate((["**"], ["?*"], ["system:serviceaccount:airflow:*", "*"])):
        (tmp_path / str(n)).mkdir()
        async with gateway(tmp_path / str(n), [{**unpinned, "subjects": globs}]) as gw:
            assert_refused(gw, await exchange(gw, intruder), "oidc_entry_unpinned", intruder)


# -- Lockgate's own tokens ---------------------------------------------------------------------


async def test_a_lockgate_token_is_never_a_subject_token(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """Lockgate named among its own trusted issuers (a copy-paste of its discovery URL):
    one task's 15-minute token must not become the deployment's proof, good for any DAG."""
    jwks = tmp_path / "lockgate-jwks.json"
    itself = {"issuer": LOCKGATE, "audience": "api", "deployment": "prod", "jwks_file": str(jwks),
              "subjects": ["airflow:prod/*"], "algorithms": ["EdDSA"]}  # fmt: skip
    async with gateway(tmp_path, [entry(cluster), itself]) as gw:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{gw.control_port}/.well-known/jwks.json"
            async with s.get(url) as r:
                jwks.write_text(json.dumps(await r.json()))
        status, minted = await post(gw, basic("prod", SECRET), **TASK)
        assert status == 200, minted
        task_token = minted["access_token"]
        answer = await exchange(gw, task_token, dag_id="payroll", task_id="export")
        assert_refused(gw, answer, "oidc_own_token", task_token)


# -- deployments -------------------------------------------------------------------------------


async def test_a_token_of_one_deployment_never_serves_another(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        token = pod_token(cluster)
        answer = await exchange(gw, token, client_id="prod")
        assert_refused(gw, answer, "oidc_client_id_mismatch", token)
        assert last_refusal(gw).deployment in ("", None, "prod")  # never "edge"'s record
        # a secretless deployment takes neither a secret nor Basic auth
        status, _ = await post(gw, basic("edge", "guess"), **TASK)
        assert status == 401 and last_refusal(gw).reason == "bad_client_secret"
        status, _ = await post(gw, client_id="edge", client_secret="guess", **TASK)
        assert status == 401
        now = int(time.time())
        claims = {"iss": "edge", "sub": "edge", "aud": LOCKGATE, "exp": now + 60, "jti": "j1"}
        status, _ = await post(
            gw,
            client_assertion=jwt.encode(claims, PK_KEY, algorithm="EdDSA"),
            client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            **TASK,
        )
        assert status == 401 and last_refusal(gw).reason == "assertion_bad_assertion"


async def test_naming_a_secretless_deployment_does_not_lock_its_workers_out(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """Ten garbage requests that merely name ``edge`` (it has no secret to guess, and a
    workload token cannot be guessed) must not cool down every worker of ``edge``."""
    async with gateway(
        tmp_path, [entry(cluster)], failed_auth_per_client=3, failed_auth_per_remote=1000
    ) as gw:
        for _ in range(4):
            assert (await post(gw, client_id="edge", client_secret="x", **TASK))[0] == 401
            assert (await exchange(gw, "garbage", client_id="edge"))[0] == 400
        status, body = await exchange(gw, pod_token(cluster), client_id="edge")
        assert status == 200, body
        # a deployment with a secret to guess still cools down after a run of wrong ones,
        # also when the guesses carry a subject token field the secret check ignores
        for _ in range(3):
            answer = await post(gw, basic("prod", "wrong"), grant_type="client_credentials",
                                subject_token="decoy", **TASK)  # fmt: skip
            assert answer[0] == 401
        status, body = await post(gw, basic("prod", SECRET), **TASK)
        assert status == 429 and last_refusal(gw).reason == "rate_limited"


async def test_failed_token_exchanges_count_against_the_address(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """Failed exchanges cool their address down, but a valid workload token from it still
    passes: the pods of one node share its address, and a neighbour's garbage must not
    lock the node's Airflow workers out (a signed token cannot be guessed)."""
    async with gateway(tmp_path, [entry(cluster)], failed_auth_per_remote=3) as gw:
        for _ in range(3):
            assert (await exchange(gw, pod_token(cluster, aud=["api://other"])))[0] == 400
        status, body = await exchange(gw, pod_token(cluster, aud=["api://other"]))
        assert status == 429 and body["error"] == "temporarily_unavailable"
        record = last_refusal(gw)
        assert record.reason == "rate_limited" and "failed_auth_remote" in record.detail["limit"]
        assert record.detail["proof_refusal"] == "oidc_wrong_audience"
        status, body = await exchange(gw, pod_token(cluster))
        assert status == 200, body
        # a client secret from the cooling address is refused before it is checked
        status, body = await post(gw, basic("prod", SECRET), **TASK)
        assert status == 429


# -- malformed input ---------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_a_deeply_nested_header_is_refused_and_audited(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    nested = _b64(b"[" * 3000 + b"]" * 3000) + "." + _b64(b"{}") + ".c2ln"
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        status, _ = await exchange(gw, nested)
        assert status == 400 and last_refusal(gw).reason == "oidc_bad_header"


async def test_a_deeply_nested_json_body_is_a_400(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        url = f"http://127.0.0.1:{gw.control_port}/v1/token"
        body = b"[" * 5000 + b"]" * 5000
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
            assert r.status == 400


# -- keys from the network ---------------------------------------------------------------------


async def test_a_discovery_over_https_cannot_send_us_for_keys_over_http(tmp_path: Path) -> None:
    """OIDC discovery may name a ``jwks_uri`` on another host (Google does), but one in
    plain http would let anyone on the path between us and that host choose the keys."""
    attacker_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(attacker_key.public_key(), as_dict=True)
    hits: list[str] = []

    async def keys(_request: web.Request) -> web.Response:
        hits.append("jwks")
        return web.json_response({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]})

    plain = web.Application()
    plain.router.add_get("/keys", keys)
    plain_runner = web.AppRunner(plain)
    await plain_runner.setup()
    plain_site = web.TCPSite(plain_runner, "127.0.0.1", 0)
    await plain_site.start()
    plain_port = plain_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    tls = write_dev_tls(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls["cert"], tls["key"])
    issuer: list[str] = []

    async def discovery(_request: web.Request) -> web.Response:
        return web.json_response(
            {"issuer": issuer[0], "jwks_uri": f"http://127.0.0.1:{plain_port}/keys"}
        )

    secure = web.Application()
    secure.router.add_get("/.well-known/openid-configuration", discovery)
    secure_runner = web.AppRunner(secure)
    await secure_runner.setup()
    secure_site = web.TCPSite(secure_runner, "127.0.0.1", 0, ssl_context=context)
    await secure_site.start()
    port = secure_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    issuer.append(f"https://localhost:{port}")
    try:
        conf = OidcIssuer(issuer=issuer[0], audience=AUDIENCE, deployment="edge",
                          subjects=["system:serviceaccount:airflow:*"], ca_file=tls["ca"],
                          algorithms=["RS256"])  # fmt: skip
        now = int(time.time())
        forged = jwt.encode(
            {"iss": issuer[0], "aud": AUDIENCE, "exp": now + 60,
             "sub": "system:serviceaccount:airflow:worker"},
            attacker_key, algorithm="RS256", headers={"kid": "k1"},
        )  # fmt: skip
        async with aiohttp.ClientSession() as http:

            async def session() -> aiohttp.ClientSession:
                return http

            with pytest.raises(AuthenticationError) as refused:
                await OidcVerifier([conf], session).verify(forged)
        assert refused.value.reason == "unknown_kid" and hits == []
    finally:
        await secure_runner.cleanup()
        await plain_runner.cleanup()


# -- SPIFFE ------------------------------------------------------------------------------------


@pytest.fixture
def spire() -> Iterator[FakeWorkloadApi]:
    fake = FakeWorkloadApi()
    yield fake
    fake.stop()


@pytest.mark.parametrize(
    "sub",
    [
        "spiffe://example.org/ns/airflow/../../ns/kube-system/sa/default",
        "spiffe://example.org/ns/airflow/./sa/x",
        "spiffe://example.org/ns/airflow//sa/x",
        "spiffe://example.org/ns/airflow/sa%2F..%2Fx",
        "spiffe://example.org/ns/airflow/sa/x?y",
    ],
)
async def test_a_jwt_svid_subject_must_be_a_spiffe_id(
    spire: FakeWorkloadApi, tmp_path: Path, sub: str
) -> None:
    """A glob's ``*`` spans ``/``: a subject with dot segments would match
    ``spiffe://example.org/ns/airflow/*`` while naming another namespace's workload."""
    conf = OidcIssuer(
        issuer="spiffe://example.org",
        audience=AUDIENCE,
        deployment="edge",
        jwks_file=spire.bundle(tmp_path / "bundle.json"),
        subjects=["spiffe://example.org/ns/airflow/*"],
        algorithms=["ES256"],
    )
    async with aiohttp.ClientSession() as http:

        async def session() -> aiohttp.ClientSession:
            return http

        verifier = OidcVerifier([conf], session)
        assert (await verifier.verify(spire.svid([AUDIENCE]))).deployment == "edge"
        with pytest.raises(AuthenticationError) as refused:
            await verifier.verify(spire.svid([AUDIENCE], sub=sub))
    assert refused.value.reason == "subject_not_allowed"


# -- the worker's token file -------------------------------------------------------------------


def _in_thread(work: Any, seconds: float) -> tuple[bool, object]:
    """Run ``work`` in a daemon thread; (finished in time, its result or exception)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), outcome[0] if outcome else None)


def test_a_token_file_that_is_a_fifo_does_not_hang_the_task(tmp_path: Path) -> None:
    from lockgate.airflow.workload_identity import TokenFile, WorkloadIdentityUnavailable

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    finished, outcome = _in_thread(TokenFile(fifo).token, 5.0)
    if not finished:  # release the reader stuck in open() so the suite goes on
        with open(fifo, "wb"):
            pass
    assert finished, "reading the token file hangs on a FIFO"
    assert isinstance(outcome, WorkloadIdentityUnavailable) and "regular file" in str(outcome)
    with pytest.raises(WorkloadIdentityUnavailable, match="regular file"):
        TokenFile("/dev/zero").token()


def test_a_token_file_caught_half_written_is_read_again(tmp_path: Path, cluster_token: str) -> None:
    """A helper that rewrites the file in place (truncate, then write) is caught between
    the two now and then; the worker must not fail the task for it."""
    from lockgate.airflow.workload_identity import TokenFile

    path = tmp_path / "token"
    path.write_text(cluster_token[: len(cluster_token) // 3])  # the writer is mid-way

    def finish_writing() -> None:
        time.sleep(0.02)
        path.write_text(cluster_token)

    writer = threading.Thread(target=finish_writing)
    writer.start()
    try:
        assert TokenFile(path).token() == cluster_token
    finally:
        writer.join()


@pytest.fixture
async def cluster_token(cluster: FakeClusterIssuer) -> str:
    return cluster.token(namespace="airflow", service_account="airflow-worker", audience=AUDIENCE)


@pytest.mark.parametrize("url", ["http://192.0.2.10:8470", "http://lockgate.airflow.svc:8470"])
def test_a_workload_token_never_crosses_the_network_in_clear_text(
    tmp_path: Path, cluster_token: str, url: str
) -> None:
    """A projected token proves the deployment for as long as it lives (a year, when the API
    server extends it): whoever reads it on the wire mints for every DAG meanwhile."""
    from lockgate.airflow._client import GatewayUnavailable, TokenServiceClient

    path = tmp_path / "token"
    path.write_text(cluster_token)
    client = TokenServiceClient(url, "edge", identity_token_file=str(path), timeout=1)
    with pytest.raises(GatewayUnavailable) as refused:
        client.mint(conn_id="api", coords={"dag_id": "etl"}, requested_ttl=None)
    assert "https" in str(refused.value) and cluster_token not in str(refused.value)


# -- lifetimes ---------------------------------------------------------------------------------


def _worker_claims(**extra: Any) -> dict[str, Any]:
    return {"namespace": "airflow", "serviceaccount": {"name": "airflow-worker"}, **extra}


async def test_a_kubernetes_token_kept_past_its_pods_lifetime_is_refused(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """The API server extends projected tokens to a year by default; the hour the pod asked
    for is ``warnafter``, and the kubelet replaces the file long before. A token presented
    later was copied out of a pod, perhaps one deleted months ago."""
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        now = int(time.time())
        year = 365 * 86400
        copied = pod_token(cluster, iat=now - 7200, nbf=now - 7200, exp=now + year,
                           **{"kubernetes.io": _worker_claims(warnafter=now - 3600)})  # fmt: skip
        answer = await exchange(gw, copied)
        assert_refused(gw, answer, "oidc_stale_token", copied)
        fresh = pod_token(cluster, exp=now + year,
                          **{"kubernetes.io": _worker_claims(warnafter=now + 3000)})  # fmt: skip
        assert (await exchange(gw, fresh))[0] == 200


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"nbf": 10**10}, "oidc_not_yet_valid"),
        ({"iat": 10**10}, "oidc_not_yet_valid"),
        ({"exp": 1}, "oidc_expired"),
        ({"exp": "never"}, "oidc_malformed"),
    ],
)
async def test_times_out_of_place_are_refused(
    tmp_path: Path, cluster: FakeClusterIssuer, claims: dict[str, Any], reason: str
) -> None:
    """Not a hole (checked): a token from the future, or one whose exp is no number."""
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        token = pod_token(cluster, **claims)
        assert_refused(gw, await exchange(gw, token), reason, token)


# -- client assertions -------------------------------------------------------------------------


async def test_a_client_assertion_also_addressed_to_another_server_is_refused(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """The audience injection of private_key_jwt: an assertion whose ``aud`` names another
    authorization server as well is in that server's hands, which could present it here."""

    def assertion(aud: str | list[str]) -> str:
        now = int(time.time())
        claims = {"iss": "pk", "sub": "pk", "aud": aud, "exp": now + 60, "iat": now,
                  "jti": uuid.uuid4().hex}  # fmt: skip
        return jwt.encode(claims, PK_KEY, algorithm="EdDSA")

    async with gateway(tmp_path, [entry(cluster)]) as gw:
        ours = LOCKGATE + "/v1/token"
        form = {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                **TASK}  # fmt: skip
        injected = assertion([ours, "https://other-as.example/token"])
        status, body = await post(gw, client_assertion=injected, **form)
        assert status == 401 and body["error"] == "invalid_client"
        record = last_refusal(gw)
        assert record.reason == "assertion_bad_assertion"
        assert injected not in json.dumps(record.to_dict(), default=str)
        for aud in (ours, [ours], LOCKGATE, [LOCKGATE, ours]):
            status, body = await post(gw, client_assertion=assertion(aud), **form)
            assert status == 200, body


# -- refetches anyone can cause ----------------------------------------------------------------


async def test_a_garbage_kid_refetch_that_fails_keeps_the_keys_in_hand(
    cluster: FakeClusterIssuer,
) -> None:
    """Anyone can send a token whose kid makes us refetch the issuer's keys: if that
    refetch meets a blip of the issuer, the keys fetched a minute ago must not be dropped
    (every worker refused), while keys past max_age are still not vouched for."""
    down = [False]

    async def keys(_request: web.Request) -> web.Response:
        if down[0]:
            return web.json_response({"error": "unavailable"}, status=503)
        return web.json_response({"keys": [key.jwk() for key in cluster._keys]})

    app = web.Application()
    app.router.add_get("/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    conf = OidcIssuer(**entry(cluster, jwks_uri=f"http://127.0.0.1:{port}/keys"))
    garbage_header = _b64(json.dumps({"alg": "RS256", "kid": "garbage"}).encode())
    async with aiohttp.ClientSession() as http:

        async def session() -> aiohttp.ClientSession:
            return http

        try:
            verifier = OidcVerifier([conf], session, refetch_interval=0, max_age=3600)
            stale = OidcVerifier([conf], session, refetch_interval=0, max_age=0)
            for each in (verifier, stale):
                assert (await each.verify(pod_token(cluster))).deployment == "edge"
            down[0] = True
            token = pod_token(cluster)
            with pytest.raises(AuthenticationError) as refused:
                await verifier.verify(garbage_header + token[token.index(".") :])
            assert refused.value.reason == "unknown_kid"
            assert (await verifier.verify(pod_token(cluster))).deployment == "edge"
            with pytest.raises(AuthenticationError) as refused:
                await stale.verify(pod_token(cluster))
            assert refused.value.reason == "unknown_kid"  # past max_age: fail closed
        finally:
            await runner.cleanup()


# -- keys and algorithms (checked: not holes) --------------------------------------------------


def _forged(cluster: FakeClusterIssuer, alg: str, key: Any, **header: Any) -> str:
    now = int(time.time())
    claims = {"iss": cluster.issuer, "aud": [AUDIENCE], "exp": now + 60, "iat": now,
              "sub": "system:serviceaccount:airflow:airflow-worker",
              "kubernetes.io": _worker_claims()}  # fmt: skip
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": cluster.kid, **header})


@pytest.mark.parametrize("case", ["embedded_jwk", "es256_for_rsa_kid", "none", "oversized"])
async def test_tokens_that_choose_their_own_key_or_algorithm_are_refused(
    tmp_path: Path, cluster: FakeClusterIssuer, case: str
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if case == "embedded_jwk":  # the attacker's own key in the header: never looked at
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
        token, reason = _forged(cluster, "RS256", attacker, jwk=jwk), "oidc_bad_signature"
    elif case == "es256_for_rsa_kid":  # another algorithm for the cluster's RSA key id
        token = _forged(cluster, "ES256", ec.generate_private_key(ec.SECP256R1()))
        reason = "oidc_unknown_kid"
    elif case == "none":
        token, reason = _forged(cluster, "none", None), "oidc_unsupported_alg"
    else:
        token = pod_token(cluster, padding="x" * 9000)
        reason = "oidc_oversized"
    async with gateway(tmp_path, [entry(cluster, algorithms=["RS256", "ES256"])]) as gw:
        assert_refused(gw, await exchange(gw, token), reason, token)


async def test_a_spiffe_subject_from_an_https_issuer_must_be_a_spiffe_id(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """SPIRE's OIDC discovery provider signs JWT-SVIDs under an https issuer: the subject
    is a SPIFFE ID there too, and a glob over it is as easily fooled by dot segments."""
    spire_like = entry(cluster, subjects=["spiffe://example.org/ns/airflow/*"])
    async with gateway(tmp_path, [spire_like]) as gw:
        good = pod_token(cluster, sub="spiffe://example.org/ns/airflow/sa/worker")
        assert (await exchange(gw, good))[0] == 200
        dotted = pod_token(cluster, sub="spiffe://example.org/ns/airflow/../kube-system/sa/x")
        assert_refused(gw, await exchange(gw, dotted), "oidc_subject_not_allowed", dotted)


# -- the address brake -------------------------------------------------------------------------


async def test_an_ipv6_host_gets_one_address_budget_for_its_whole_slash_64(tmp_path: Path) -> None:
    """One host holds a /64: counted per address, it would get a fresh budget (and a fresh
    row in the shared table) for every request."""
    from lockgate.config.identity import RateLimitSettings
    from lockgate.identity._request import OAuthError
    from lockgate.identity.rate_limit import RateLimiter, RateLimits

    limits = RateLimits(
        RateLimiter(tmp_path / "rate_limits.db"),
        RateLimitSettings(failed_auth_per_remote=2, failed_auth_per_client=0),
    )
    try:
        await limits.failed(None, "2001:db8:1:2::1")
        await limits.failed(None, "2001:db8:1:2:ffff::9")
        with pytest.raises(OAuthError) as cooling:
            await limits.refuse_if_cooling(None, "2001:db8:1:2:dead:beef:0:7")
        assert cooling.value.status == 429
        await limits.refuse_if_cooling(None, "2001:db8:1:3::1")  # the next /64 is another
        await limits.failed(None, "::ffff:192.0.2.7")  # IPv4-mapped is the IPv4 address
        await limits.failed(None, "192.0.2.7")
        with pytest.raises(OAuthError):
            await limits.refuse_if_cooling(None, "192.0.2.7")
        await limits.refuse_if_cooling(None, "192.0.2.8")  # IPv4 addresses stay apart
    finally:
        limits.close()


async def test_a_key_set_that_arrives_in_pieces_is_read_whole(cluster: FakeClusterIssuer) -> None:
    """Not an attack but what one rides on: a JWKS sent in several packets (Entra ID's is
    tens of kilobytes with its certificates) was cut at the first, and every token of
    that issuer refused until the next refetch."""

    async def keys(request: web.Request) -> web.StreamResponse:
        doc = json.dumps({"keys": [key.jwk() for key in cluster._keys], "pad": "x" * 20000})
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for at in range(0, len(doc), 1000):
            await resp.write(doc[at : at + 1000].encode())
            await asyncio.sleep(0.002)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    conf = OidcIssuer(**entry(cluster, jwks_uri=f"http://127.0.0.1:{port}/keys"))
    try:
        async with aiohttp.ClientSession() as http:

            async def session() -> aiohttp.ClientSession:
                return http

            verifier = OidcVerifier([conf], session)
            assert (await verifier.verify(pod_token(cluster))).deployment == "edge"
    finally:
        await runner.cleanup()


def test_a_token_path_caught_mid_swap_is_read_again(
    tmp_path: Path, cluster: FakeClusterIssuer, cluster_token: str
) -> None:
    """The kubelet swaps ``..data`` to a new payload directory and removes the old one: a
    path resolved through the old link at that moment finds no file, once."""
    from lockgate.airflow.workload_identity import TokenFile, WorkloadIdentityUnavailable

    path = tmp_path / "projected" / "token"

    def kubelet() -> None:
        time.sleep(0.02)
        cluster.project(path, namespace="airflow", service_account="airflow-worker",
                        audience=AUDIENCE)  # fmt: skip

    writer = threading.Thread(target=kubelet)
    writer.start()
    try:
        assert TokenFile(path).token().count(".") == 2
    finally:
        writer.join()
    with pytest.raises(WorkloadIdentityUnavailable, match="no such file"):
        TokenFile(tmp_path / "never").token()  # a path that stays missing is still an error


def _non_loopback_address() -> str | None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent: only a route is chosen
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_keys_are_never_fetched_in_clear_text_across_the_network(tmp_path: Path) -> None:
    """An issuer configured as plain http (an in-cluster IdP's service URL) would let
    anyone on the path between Lockgate and it hand us keys of their own."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no address off loopback")
    plain = FakeClusterIssuer()
    runner = web.AppRunner(plain.app())
    await runner.setup()
    site = web.TCPSite(runner, address, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    plain.issuer = f"http://{address}:{port}"
    try:
        conf = OidcIssuer(**entry(plain))
        async with aiohttp.ClientSession() as http:

            async def session() -> aiohttp.ClientSession:
                return http

            with pytest.raises(AuthenticationError) as refused:
                await OidcVerifier([conf], session).verify(pod_token(plain))
        assert refused.value.reason == "unknown_kid"
        assert (plain.discovery_requests, plain.jwks_requests) == (0, 0)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "system:serviceaccount:Airflow:airflow-worker"}, "oidc_subject_not_allowed"),
        ({"sub": "system:serviceaccount:\uff41irflow:airflow-worker"}, "oidc_subject_not_allowed"),
        ({"sub": "system:serviceaccount:airflow"}, "oidc_subject_not_allowed"),
        ({"kubernetes.io": _worker_claims(namespace="airflow\n")},
         "oidc_claim_not_allowed:kubernetes.io.namespace"),
        ({"kubernetes.io": _worker_claims(namespace=["airflow"])},
         "oidc_claim_not_allowed:kubernetes.io.namespace"),
        ({"kubernetes.io": _worker_claims(namespace=None)},
         "oidc_claim_not_allowed:kubernetes.io.namespace"),
    ],
)  # fmt: skip
async def test_case_unicode_and_shape_tricks_match_no_glob(
    tmp_path: Path, cluster: FakeClusterIssuer, claims: dict[str, Any], reason: str
) -> None:
    """Checked, not holes: globs match case-sensitively with no Unicode folding, a glob
    ends where the value ends, and a claim must be one plain value."""
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        token = pod_token(cluster, **claims)
        assert_refused(gw, await exchange(gw, token), reason, token)


async def test_a_key_set_file_swapped_for_a_fifo_does_not_hold_the_gateway(
    tmp_path: Path, spire: FakeWorkloadApi
) -> None:
    """The trust bundle is read on the event loop: a FIFO in its place (write access to its
    directory) would stop every request of the gateway, not just refuse SVIDs."""
    bundle = tmp_path / "bundle.json"
    os.mkfifo(bundle)
    conf = OidcIssuer(issuer="spiffe://example.org", audience=AUDIENCE, deployment="edge",
                      jwks_file=bundle, subjects=["spiffe://example.org/ns/airflow/*"],
                      algorithms=["ES256"])  # fmt: skip
    async with aiohttp.ClientSession() as http:

        async def session() -> aiohttp.ClientSession:
            return http

        verifier = OidcVerifier([conf], session)

        def verify() -> object:
            return asyncio.run(verifier.verify(spire.svid([AUDIENCE])))

        finished, outcome = _in_thread(verify, 5.0)
    if not finished:  # release the reader stuck in open() so the suite goes on
        with open(bundle, "wb"):
            pass
    assert finished, "reading the trust bundle hangs on a FIFO"
    assert isinstance(outcome, AuthenticationError) and outcome.reason == "unknown_kid"


async def test_a_key_set_beyond_its_bound_is_not_read_to_its_end(
    cluster: FakeClusterIssuer,
) -> None:
    """Checked, not a hole: a key set of megabytes is dropped at 512 KiB (memory)."""
    sent: list[int] = []

    async def keys(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"keys": [], "pad": "')
        try:
            for _ in range(1024):  # 64 MiB if read to the end
                await resp.write(b"x" * 65536)
                sent.append(1)
        except (ConnectionError, RuntimeError):
            pass  # the reader hung up
        return resp

    app = web.Application()
    app.router.add_get("/keys", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    conf = OidcIssuer(**entry(cluster, jwks_uri=f"http://127.0.0.1:{port}/keys"))
    try:
        async with aiohttp.ClientSession() as http:

            async def session() -> aiohttp.ClientSession:
                return http

            with pytest.raises(AuthenticationError) as refused:
                await OidcVerifier([conf], session).verify(pod_token(cluster))
        assert refused.value.reason == "unknown_kid"
        assert len(sent) < 1024
    finally:
        await runner.cleanup()


# -- what the audit says of a workload ---------------------------------------------------------


async def test_the_authenticator_names_the_workload_a_subject_token_proves(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    """A deployment is many pods: which one minted (or tried to mint for another
    deployment) is what an auditor asks after a token leaked."""
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        assert gw.control is not None
        authenticator = gw.control.ctx.tokens._client_auth
        body = {"grant_type": EXCHANGE, "subject_token": pod_token(cluster),
                "subject_token_type": JWT_TYPE}  # fmt: skip
        ctx: dict[str, Any] = {}
        assert await authenticator.authenticate(body, None, "127.0.0.1", ctx) == ("edge", "oidc")
        assert ctx == {"workload_subject": "system:serviceaccount:airflow:airflow-worker",
                       "workload_issuer": cluster.issuer}  # fmt: skip


async def test_the_audit_names_the_workload_that_minted_or_tried(
    tmp_path: Path, cluster: FakeClusterIssuer
) -> None:
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        assert (await exchange(gw, pod_token(cluster)))[0] == 200
        assert (await exchange(gw, pod_token(cluster), client_id="prod"))[0] == 400
        gw.audit.flush(5.0)
        issued, refused = gw.audit.search()[-2:]
        for record in (issued, refused):
            assert (
                record.detail["workload_subject"] == "system:serviceaccount:airflow:airflow-worker"
            )


# the attacker's weak key is the point of the test: PyJWT's warning about it is expected
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_an_issuer_key_under_2048_bits_verifies_nothing(tmp_path: Path) -> None:
    """As for a deployment's own key: a 1024-bit RSA key in an issuer's key set (a legacy
    IdP, or one an attacker factored) proves nothing."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key(), as_dict=True)
    bundle = tmp_path / "jwks.json"
    bundle.write_text(json.dumps({"keys": [{**jwk, "kid": "old", "alg": "RS256"}]}))
    issuer = "https://legacy-idp.example"
    conf = OidcIssuer(issuer=issuer, audience=AUDIENCE, deployment="edge", jwks_file=bundle,
                      subjects=["svc-airflow"], algorithms=["RS256"])  # fmt: skip
    now = int(time.time())
    token = jwt.encode({"iss": issuer, "aud": AUDIENCE, "sub": "svc-airflow", "exp": now + 60},
                       weak, algorithm="RS256", headers={"kid": "old"})  # fmt: skip
    async with aiohttp.ClientSession() as http:

        async def session() -> aiohttp.ClientSession:
            return http

        with pytest.raises(AuthenticationError) as refused:
            await OidcVerifier([conf], session).verify(token)
    assert refused.value.reason == "unknown_kid"


async def test_a_key_set_nested_past_the_parsers_depth_verifies_nothing(tmp_path: Path) -> None:
    """json raises RecursionError, not ValueError, on [[[[...]]]]: a key set like that is
    unreadable, so the token is refused with a reason, never an unexpected exception."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bundle = tmp_path / "jwks.json"
    bundle.write_text('{"keys": ' + "[" * 100_000 + "]" * 100_000 + "}")
    issuer = "https://nested-idp.example"
    conf = OidcIssuer(issuer=issuer, audience=AUDIENCE, deployment="edge", jwks_file=bundle,
                      subjects=["svc-airflow"], algorithms=["RS256"])  # fmt: skip
    now = int(time.time())
    token = jwt.encode({"iss": issuer, "aud": AUDIENCE, "sub": "svc-airflow", "exp": now + 60},
                       key, algorithm="RS256", headers={"kid": "k1"})  # fmt: skip
    async with aiohttp.ClientSession() as http:

        async def session() -> aiohttp.ClientSession:
            return http

        with pytest.raises(AuthenticationError) as refused:
            await OidcVerifier([conf], session).verify(token)
    assert refused.value.reason == "unknown_kid"


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"actor_token": "x", "actor_token_type": JWT_TYPE}, "actor_token_unsupported"),
        ({"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
         "bad_requested_token_type"),
    ],
)  # fmt: skip
async def test_a_token_exchange_asking_for_what_lockgate_does_not_issue_is_refused(
    tmp_path: Path, cluster: FakeClusterIssuer, extra: dict[str, str], reason: str
) -> None:
    """Anything unplaceable is refused: a caller asking for delegation (an actor token)
    or a refresh token must not be handed an impersonation access token instead."""
    async with gateway(tmp_path, [entry(cluster)]) as gw:
        status, body = await exchange(gw, pod_token(cluster), **extra)
        assert status == 400 and body["error"] == "invalid_request"
        assert last_refusal(gw).reason == reason
        ok = {"requested_token_type": "urn:ietf:params:oauth:token-type:access_token"}
        assert (await exchange(gw, pod_token(cluster), **ok))[0] == 200


def test_the_memory_fallback_holds_a_bounded_number_of_buckets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a database outage every new address is a bucket in memory: a flood of
    addresses (an IPv4 botnet) must not grow the gateway's memory without bound."""
    from lockgate.errors import StoreUnavailable
    from lockgate.identity import rate_limit
    from lockgate.identity.rate_limit import Limit, RateLimiter

    monkeypatch.setattr(rate_limit, "MAX_LOCAL_BUCKETS", 50)
    limiter = RateLimiter(tmp_path / "rate_limits.db", clock=lambda: 0.0)

    def down() -> None:
        raise StoreUnavailable("database down")

    monkeypatch.setattr(limiter.db, "transaction", down)
    limit = Limit("failed_auth_remote", 0.0, 1.0)
    try:
        assert limiter.take("failed_auth_remote:hot", limit).allowed
        for n in range(500):
            limiter.take(f"failed_auth_remote:198.51.100.{n}", limit)
            assert not limiter.take("failed_auth_remote:hot", limit).allowed  # kept: in use
        assert len(limiter._local) <= 50
    finally:
        limiter.close()
