"""``signing:``, ``type: federated`` credentials, workload-identity issuers and deployments
proven only by them: what loads, what is refused, and the algorithm each audience gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lockgate.config import ENTRA_FEDERATION_AUDIENCE, FederatedCredential, load_config
from tests.config._files import error_of, valid, write

ENTRA = {
    "name": "cosmos-fed",
    "type": "federated",
    "provider": "entra",
    "token_url": "https://login.example/tenant/oauth2/v2.0/token",
    "client_id": "11111111-2222-3333-4444-555555555555",
    "scope": "https://acct.documents.azure.com/.default",
}
DATABRICKS = {
    "name": "dbx-fed",
    "type": "federated",
    "provider": "databricks",
    "token_url": "https://adb-1.azuredatabricks.net/oidc/v1/token",
    "audience": "account-1234",
}


def _with(**sections: Any) -> dict[str, Any]:
    data = valid()
    data.update(sections)
    return data


def test_lockgate_tokens_stay_eddsa_and_mappings_pick_by_exact_name_then_glob(
    tmp_path: Path,
) -> None:
    data = _with(
        signing={
            "algorithms": ["EdDSA", "ES256"],
            "audiences": {
                "https://*.azuredatabricks.net/*": "ES256",
                "https://adb-9.azuredatabricks.net/oidc/v1/token": "RS256",
            },
        }
    )
    cfg = load_config(write(tmp_path, data))
    sign = cfg.signing
    assert sign.algorithm_for("orders-api") == "EdDSA"
    assert sign.algorithm_for("https://adb-1.azuredatabricks.net/oidc/v1/token") == "ES256"
    # the exact entry wins over the glob listed before it
    assert sign.algorithm_for("https://adb-9.azuredatabricks.net/oidc/v1/token") == "RS256"
    assert sign.algorithm_for("unmapped", default="RS256") == "RS256"
    # what the mappings name is kept even when `algorithms` leaves it out
    assert cfg.signing_algorithms() == ["EdDSA", "RS256", "ES256"]


def test_eddsa_cannot_be_dropped(tmp_path: Path) -> None:
    path, msg = error_of(tmp_path, _with(signing={"algorithms": ["RS256"]}))
    assert str(path) in msg and "signing.algorithms" in msg and "EdDSA" in msg


def test_an_unknown_algorithm_is_refused_by_name(tmp_path: Path) -> None:
    _, msg = error_of(tmp_path, _with(signing={"audiences": {"x": "HS256"}}))
    assert "signing.audiences" in msg and "HS256" in msg


def test_federated_credentials_bring_their_algorithm_and_defaults(tmp_path: Path) -> None:
    data = valid()
    data["credentials"] += [ENTRA, {**DATABRICKS, "algorithm": "ES256"}]
    cfg = load_config(write(tmp_path, data))
    entra = cfg.credential("cosmos-fed")
    dbx = cfg.credential("dbx-fed")
    assert isinstance(entra, FederatedCredential) and isinstance(dbx, FederatedCredential)
    assert entra.assertion_audience == ENTRA_FEDERATION_AUDIENCE
    assert entra.assertion_subject == "lockgate:credential:cosmos-fed"
    assert dbx.assertion_audience == "account-1234"
    assert cfg.federation_algorithm(entra) == "RS256"
    assert cfg.federation_algorithm(dbx) == "ES256"
    assert cfg.signing_algorithms() == ["EdDSA", "RS256", "ES256"]


def test_without_federation_only_eddsa_keys_are_kept(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, valid())).signing_algorithms() == ["EdDSA"]


@pytest.mark.parametrize(
    ("credential", "signing", "expected"),
    [
        ({**ENTRA, "client_id": None}, None, "client_id"),
        ({**ENTRA, "scope": None}, None, "scope"),
        ({**ENTRA, "algorithm": "ES256"}, None, "RS256"),
        ({**DATABRICKS, "audience": None}, None, "audience"),
        ({**DATABRICKS, "algorithm": "EdDSA"}, None, "algorithm"),
        (ENTRA, {"audiences": {ENTRA_FEDERATION_AUDIENCE: "ES256"}}, "RS256 only"),
        (DATABRICKS, {"audiences": {"account-*": "EdDSA"}}, "RS256 or ES256"),
    ],
)
def test_federation_a_cloud_would_refuse_is_refused_at_load(
    tmp_path: Path,
    credential: dict[str, Any],
    signing: dict[str, Any] | None,
    expected: str,
) -> None:
    data = valid()
    data["credentials"].append({k: v for k, v in credential.items() if v is not None})
    if signing:
        data["signing"] = signing
    path, msg = error_of(tmp_path, data)
    index = len(data["credentials"]) - 1
    assert str(path) in msg and f"credentials[{index}]" in msg and expected in msg


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"audience": "orders-api"}, "also a resource name"),
        ({"subject": "airflow:prod/finance_daily/load"}, "task principals"),
    ],
)
def test_an_assertion_a_task_token_could_pass_for_is_refused(
    tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    data = valid()
    assert any(r["name"] == "orders-api" for r in data["resources"])
    data["credentials"].append({**DATABRICKS, **change})
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg and expected in msg


@pytest.mark.parametrize(
    "token_url",
    ["http://login.example/t/oauth2/v2.0/token", "ftp://login.example/token", "login.example"],
)
@pytest.mark.parametrize("credential", [ENTRA, {**ENTRA, "type": "oauth2_client_credentials"}])
def test_a_token_url_a_secret_or_assertion_would_cross_in_clear_is_refused(
    tmp_path: Path, credential: dict[str, Any], token_url: str
) -> None:
    data = valid()
    cred = {**credential, "token_url": token_url}
    if cred["type"] == "oauth2_client_credentials":
        del cred["provider"]
    data["credentials"].append(cred)
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg and "token_url" in msg and "https" in msg


@pytest.mark.parametrize(
    "token_url", ["http://127.0.0.1:8080/token", "http://localhost/token", "http://[::1]/t"]
)
def test_plain_http_to_this_machine_is_allowed(tmp_path: Path, token_url: str) -> None:
    data = valid()
    data["credentials"].append({**ENTRA, "token_url": token_url})
    load_config(write(tmp_path, data))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"subject": "AIRFLOW:prod/finance_daily/load"}, "task principals"),
        ({"audience": "https://lockgate.example/upstream/orders-api"}, "caller-identity"),
    ],
)
def test_an_assertion_shaped_like_another_lockgate_token_is_refused(
    tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    data = _with(issuer="https://lockgate.example")
    data["credentials"].append({**DATABRICKS, **change})
    _, msg = error_of(tmp_path, data)
    assert expected in msg


def test_a_deployment_without_proof_needs_an_issuer_that_proves_it(tmp_path: Path) -> None:
    data = valid()
    del data["deployments"][0]["proof"]  # "prod": oidc_issuers[0] names it
    cfg = load_config(write(tmp_path, data))
    assert cfg.deployment("prod") is not None and cfg.deployment("prod").proof is None

    del data["deployments"][1]["proof"]  # "stage": nothing names it
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg and "deployments[1].proof" in msg and "'stage'" in msg


def test_issuer_claims_audiences_and_trust_files_load(tmp_path: Path) -> None:
    data = valid()
    data["oidc_issuers"][0].update(
        audience=["lockgate", "api://AzureADTokenExchange"],
        claims={"kubernetes.io.namespace": "airflow", "kubernetes.io.serviceaccount.name": ["a*"]},
        ca_file="tls/cluster-ca.pem",
        jwks_file="bundle.jwks",
    )
    issuer = load_config(write(tmp_path, data)).oidc_issuers[0]
    assert issuer.audience == ["lockgate", "api://AzureADTokenExchange"]
    assert issuer.claims["kubernetes.io.serviceaccount.name"] == ["a*"]
    # relative paths are kept relative to the config file, as every other path
    assert issuer.ca_file == tmp_path.resolve() / "tls" / "cluster-ca.pem"
    assert issuer.jwks_file == tmp_path.resolve() / "bundle.jwks"
