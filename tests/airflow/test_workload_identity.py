"""No secret on the worker: the real secrets backend proves its deployment with a
workload-identity token, against the real gateway (control plane, audit).

The "cluster" is the test Kubernetes issuer (discovery and JWKS over HTTP, projected token
files written as the kubelet writes them); the "SPIRE agent" is the fake SPIFFE Workload
API on a unix socket. Deployments ``edge`` and ``attested`` have no proof of their own:
only their issuers' tokens prove them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import jwt
import pytest
import yaml

pytest.importorskip("airflow.sdk")

from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
from spiffe._proto import workload_pb2, workload_pb2_grpc

from lockgate.airflow import secrets
from lockgate.airflow._client import GatewayDenied, GatewayUnavailable, TokenServiceClient
from lockgate.audit import AuditReader
from lockgate.demo.stack import LocalStack, free_port
from lockgate.demo.standins.kubernetes import FakeClusterIssuer, start
from tests.fakes.spiffe_workload_api import FakeWorkloadApi
from tests.identity._fakes import FakeAirflowApi

AUDIENCE = "https://lockgate.test/workers"
AIRFLOW_BEARER_ENV = "LOCKGATE_TEST_WI_AIRFLOW_TOKEN"
EDGE_POLICY = """\
rules:
  - id: workers-read-orders
    effect: allow
    principals: ["airflow:edge/finance_*/*", "airflow:attested/finance_*/*"]
    actions: [read]
    resources: [orders-api]
    objects: ["/orders", "/orders/**"]
"""


class Secretless(SimpleNamespace):
    stack: LocalStack
    cluster: FakeClusterIssuer
    spire: FakeWorkloadApi
    airflow: FakeAirflowApi


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secretless]:
    workdir = tmp_path_factory.mktemp("secretless")
    stack = LocalStack(workdir)
    cluster, spire = FakeClusterIssuer(), FakeWorkloadApi()
    airflow = FakeAirflowApi("airflow-api-bearer")
    cluster_port, airflow_port = free_port(), free_port()
    spire.start()
    config = yaml.safe_load(stack.config_path.read_text())
    config["deployments"] += [
        {"name": "edge", "dags": ["finance_*"]},
        {"name": "attested", "dags": ["finance_*"],
         "airflow_api": {"url": f"http://127.0.0.1:{airflow_port}",
                         "token_env": AIRFLOW_BEARER_ENV}},
    ]  # fmt: skip
    issuer = f"http://127.0.0.1:{cluster_port}"
    config["oidc_issuers"] = [
        {"issuer": issuer, "audience": AUDIENCE, "deployment": "edge",
         "subjects": ["system:serviceaccount:airflow:*"],
         "claims": {"kubernetes.io.serviceaccount.name": ["airflow-worker"]},
         "algorithms": ["RS256"]},
        {"issuer": issuer, "audience": AUDIENCE, "deployment": "attested",
         "subjects": ["system:serviceaccount:airflow-attested:*"], "algorithms": ["RS256"]},
        {"issuer": "spiffe://example.org", "audience": AUDIENCE, "deployment": "edge",
         "jwks_file": str(spire.bundle(workdir / "spiffe-bundle.json")),
         "subjects": ["spiffe://example.org/ns/airflow/*"], "algorithms": ["ES256"]},
    ]  # fmt: skip
    # refusals are what these tests make: no failed-authentication cool-down in the way
    config.setdefault("tokens", {})["rate_limit"] = {
        "failed_auth_per_client": 0, "failed_auth_per_remote": 0,
    }  # fmt: skip
    stack.config_path.write_text(yaml.safe_dump(config))
    (workdir / "policies" / "edge.yaml").write_text(EDGE_POLICY)
    os.environ[AIRFLOW_BEARER_ENV] = airflow.bearer
    with stack:
        runner = stack.call(start(cluster, port=cluster_port))
        assert cluster.issuer == issuer
        airflow_server = stack.call(_serve_on(airflow, airflow_port))
        try:
            yield Secretless(stack=stack, cluster=cluster, spire=spire, airflow=airflow)
        finally:
            stack.call(runner.cleanup())
            stack.call(airflow_server.__aexit__(None, None, None))
            spire.stop()
            os.environ.pop(AIRFLOW_BEARER_ENV, None)


async def _serve_on(airflow: FakeAirflowApi, port: int) -> Any:
    from aiohttp.test_utils import TestServer

    server = TestServer(airflow.app, host="127.0.0.1", port=port)
    await server.start_server()

    class _Closer:
        async def __aexit__(self, *exc: object) -> None:
            await server.close()

    return _Closer()


def _ti(dag_id: str = "finance_daily", try_number: int = 1) -> SimpleNamespace:
    return SimpleNamespace(dag_id=dag_id, task_id="load", run_id="manual__wi",
                           try_number=try_number, map_index=-1,
                           task=SimpleNamespace(execution_timeout=None))  # fmt: skip


@pytest.fixture
def in_task(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(secrets, "task_coordinates", lambda: secrets.coordinates_of(_ti()))
    yield


def backend(world: Secretless, deployment: str = "edge", **proof: str) -> Any:
    return secrets.LockgateSecretsBackend(
        url=world.stack.control_url, deployment=deployment, ca_file=str(world.stack.ca_file),
        **proof,
    )  # fmt: skip


def client(world: Secretless, deployment: str = "edge", **proof: str) -> TokenServiceClient:
    return TokenServiceClient(world.stack.control_url, deployment,
                              ca_file=str(world.stack.ca_file), **proof)  # fmt: skip


def project(world: Secretless, path: Path, **changes: Any) -> str:
    args: dict[str, Any] = {"namespace": "airflow", "service_account": "airflow-worker",
                            "audience": AUDIENCE, "ttl": 600, **changes}  # fmt: skip
    return world.cluster.project(path, **args)


def principal_of(world: Secretless, connection: str | None) -> str:
    assert connection is not None
    token = json.loads(connection)["extra"]["Authorization"].removeprefix("Bearer ")
    claims = world.stack.gateway.verifier.verify(token, "orders-api")
    return str(claims.principal)


def last_refusal(world: Secretless) -> str | None:
    gateway = world.stack.gateway
    assert gateway is not None and gateway.audit.flush(5.0)
    rows = AuditReader(world.stack.config.data_dir / "audit.db").search(decision="deny", limit=1)
    return rows[-1].reason if rows else None


def refused(world: Secretless, proof: dict[str, str], deployment: str = "edge") -> str | None:
    with pytest.raises(GatewayDenied) as denied:
        client(world, deployment, **proof).catalog()
    assert denied.value.status in (400, 401)
    return last_refusal(world)


# -- Kubernetes projected service-account tokens ------------------------------------------------


def test_the_right_service_account_gets_a_task_token(
    world: Secretless, tmp_path: Path, in_task: None
) -> None:
    path = tmp_path / "token"
    token = project(world, path)
    connection = backend(world, identity_token_file=str(path)).get_conn_value("orders_api")
    assert principal_of(world, connection) == "airflow:edge/finance_daily/load"
    assert token not in (connection or "")  # the proof never travels on


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"namespace": "default"}, "oidc_subject_not_allowed"),
        ({"service_account": "default"},
         "oidc_claim_not_allowed:kubernetes.io.serviceaccount.name"),
        ({"audience": "https://someone-else.test"}, "oidc_wrong_audience"),
        ({"now": time.time() - 7200}, "oidc_expired"),
    ],
)  # fmt: skip
def test_tokens_the_issuer_entry_does_not_take_are_refused_and_audited(
    world: Secretless, tmp_path: Path, changes: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "token"
    project(world, path, **changes)
    assert refused(world, {"identity_token_file": str(path)}) == reason


def test_a_token_of_another_issuer_or_signed_hs256_is_refused(
    world: Secretless, tmp_path: Path
) -> None:
    other = FakeClusterIssuer()
    other.issuer = "https://another-cluster.test"  # never served: not trusted anyway
    path = tmp_path / "token"
    project(SimpleNamespace(cluster=other), path)  # type: ignore[arg-type]
    assert refused(world, {"identity_token_file": str(path)}) == "oidc_wrong_issuer"
    # the right issuer's name on a token it never signed: not one of its keys
    other.issuer = world.cluster.issuer
    project(SimpleNamespace(cluster=other), path)  # type: ignore[arg-type]
    assert refused(world, {"identity_token_file": str(path)}) == "oidc_unknown_kid"
    # HS256 with a guessable "key" (the issuer's public key, the classic confusion)
    now = int(time.time())
    claims = {"iss": world.cluster.issuer, "aud": [AUDIENCE], "iat": now, "exp": now + 600,
              "sub": "system:serviceaccount:airflow:airflow-worker"}  # fmt: skip
    path.write_text(jwt.encode(claims, "x" * 32, algorithm="HS256",
                               headers={"kid": world.cluster.kid}))  # fmt: skip
    assert refused(world, {"identity_token_file": str(path)}) == "oidc_unsupported_alg"


def test_the_kubelet_refreshing_the_file_is_picked_up_at_the_next_mint(
    world: Secretless, tmp_path: Path
) -> None:
    path = tmp_path / "volume" / "token"
    worker = client(world, identity_token_file=str(path))
    project(world, path)
    assert "orders_api" in worker.catalog()
    project(world, path, service_account="default")  # the file now proves someone else
    with pytest.raises(GatewayDenied):
        worker.catalog()
    project(world, path)
    assert "orders_api" in worker.catalog()


def test_a_rotated_cluster_key_is_picked_up(world: Secretless, tmp_path: Path) -> None:
    path = tmp_path / "token"
    worker = client(world, identity_token_file=str(path))
    project(world, path)
    assert "orders_api" in worker.catalog()
    world.cluster.rotate_key()
    project(world, path)  # signed with the new kid
    # an unknown kid makes the gateway fetch the cluster's JWKS again, at most every 10 s
    deadline = time.monotonic() + 15
    while True:
        try:
            assert "orders_api" in worker.catalog()
            break
        except GatewayDenied:
            assert last_refusal(world) == "oidc_unknown_kid"
            assert time.monotonic() < deadline, "the rotated key was never fetched"
            time.sleep(1)


def test_azure_federated_token_file_names_the_token(
    world: Secretless, tmp_path: Path, in_task: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = "AZURE_FEDERATED_TOKEN_FILE"
    azure = backend(world, identity_token_env=env)
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(GatewayUnavailable) as unset:
        azure.client.catalog()
    assert env in str(unset.value)
    path = tmp_path / "azure-identity-token"
    monkeypatch.setenv(env, str(path))
    with pytest.raises(GatewayUnavailable) as missing:
        azure.client.catalog()
    assert str(path) in str(missing.value)
    token = project(world, path)
    connection = azure.get_conn_value("orders_api")
    assert principal_of(world, connection) == "airflow:edge/finance_daily/load"
    assert token not in str(missing.value)


# -- SPIFFE ---------------------------------------------------------------------------------------


def test_a_jwt_svid_from_the_workload_api_socket(
    world: Secretless, in_task: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    spire = backend(world, spiffe_socket=world.spire.socket, spiffe_audience=AUDIENCE)
    assert principal_of(world, spire.get_conn_value("orders_api")) == (
        "airflow:edge/finance_daily/load"
    )
    assert "FetchJWTSVID" in world.spire.calls
    monkeypatch.setenv("SPIFFE_ENDPOINT_SOCKET", "unix://" + world.spire.socket)
    from_env = client(world, spiffe_socket="env", spiffe_audience=AUDIENCE)
    assert "orders_api" in from_env.catalog()
    # an SVID for another audience is not for Lockgate
    wrong = client(world, spiffe_socket=world.spire.socket, spiffe_audience="spiffe://db")
    with pytest.raises(GatewayDenied):
        wrong.catalog()
    assert last_refusal(world) == "oidc_wrong_audience"


def test_the_fake_agent_wants_the_security_header(world: Secretless) -> None:
    with grpc.insecure_channel("unix://" + world.spire.socket) as channel:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
        with pytest.raises(grpc.RpcError) as refused_call:
            stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[AUDIENCE]), timeout=5)
    assert refused_call.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_no_agent_at_the_socket_says_where_it_looked(world: Secretless, tmp_path: Path) -> None:
    nowhere = str(tmp_path / "no-agent.sock")
    with pytest.raises(GatewayUnavailable) as unavailable:
        client(world, spiffe_socket=nowhere, spiffe_audience=AUDIENCE).catalog()
    assert nowhere in str(unavailable.value)


# -- what a secretless deployment refuses -------------------------------------------------------


def test_a_deployment_without_a_proof_refuses_any_client_secret(
    world: Secretless, tmp_path: Path
) -> None:
    assert refused(world, {"client_secret": "anything"}) == "bad_client_secret"
    # the scaffold's own deployment secret is prod's, not edge's
    assert refused(world, {"client_secret": world.stack.deployment_secret}) == ("bad_client_secret")
    # and a workload token proving edge cannot be spent as another deployment
    path = tmp_path / "token"
    project(world, path)
    assert refused(world, {"identity_token_file": str(path)}, deployment="prod") == (
        "oidc_client_id_mismatch"
    )


def test_one_proof_only() -> None:
    with pytest.raises(ValueError, match="one proof"):
        TokenServiceClient("https://x", "edge", client_secret_file="/s", identity_token_file="/t")
    with pytest.raises(ValueError, match="one workload identity source"):
        TokenServiceClient("https://x", "edge", identity_token_file="/t", spiffe_socket="/s")
    with pytest.raises(ValueError, match="spiffe_audience"):
        TokenServiceClient("https://x", "edge", spiffe_socket="/s")


# -- attestation keeps binding the claimed task to a running one ----------------------------------


def test_attestation_with_a_workload_identity(
    world: Secretless, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    project(world, path, namespace="airflow-attested", service_account="airflow-worker")
    worker = backend(world, "attested", identity_token_file=str(path))
    ti = _ti(try_number=1)
    monkeypatch.setattr(secrets, "task_coordinates", lambda: secrets.coordinates_of(ti))
    key = (ti.dag_id, ti.run_id, ti.task_id, -1)
    world.airflow.instances[key] = {"state": "running", "try_number": 1}
    assert principal_of(world, worker.get_conn_value("orders_api")) == (
        "airflow:attested/finance_daily/load"
    )
    ti = _ti(try_number=2)  # a try Airflow is not running
    with pytest.raises(AirflowSecretsBackendAccessDenied, match="not 2"):
        worker.get_conn_value("orders_api")
    assert last_refusal(world) == "attestation_failed"


# -- the sources alone ---------------------------------------------------------------------------


def test_a_token_file_must_hold_a_jwt_and_errors_never_show_its_content(tmp_path: Path) -> None:
    from lockgate.airflow.workload_identity import TokenFile, WorkloadIdentityUnavailable

    path = tmp_path / "token"
    for content in ("", "not-a-jwt-but-maybe-a-secret", "x" * 70_000):
        path.write_text(content)
        with pytest.raises(WorkloadIdentityUnavailable) as bad:
            TokenFile(path).token()
        assert str(path) in str(bad.value)
        assert "maybe-a-secret" not in str(bad.value)
    jwt_shaped = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"  # {"alg":"RS256"}.{"sub":"x"}.sig
    path.write_text(f"  {jwt_shaped}\n")
    assert TokenFile(path).token() == jwt_shaped  # the kubelet writes no newline; others do


def test_spiffe_socket_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from lockgate.airflow.workload_identity import SpiffeWorkloadApi, WorkloadIdentityUnavailable

    monkeypatch.delenv("SPIFFE_ENDPOINT_SOCKET", raising=False)
    with pytest.raises(WorkloadIdentityUnavailable, match="SPIFFE_ENDPOINT_SOCKET"):
        SpiffeWorkloadApi("env", AUDIENCE).token()
    with pytest.raises(ValueError, match="spiffe_audience"):
        SpiffeWorkloadApi("/run/spire/agent.sock", "")
