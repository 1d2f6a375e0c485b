"""lockgate.yaml's model: every section loads with its defaults; checks within a section
and across sections name the field as written in the file; lookups by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.config import LockgateConfig, load_config, parse_config
from tests.config._files import error_of, valid, write


def test_valid_config_loads_every_section(tmp_path: Path) -> None:
    path = write(tmp_path, valid())
    cfg = load_config(path)
    assert isinstance(cfg, LockgateConfig)
    assert cfg.source == path.resolve()
    assert cfg.listeners.control.port == 9470 and cfg.listeners.control.scheme == "https"
    assert cfg.listeners.http.scheme == "http"
    assert cfg.tokens.default_ttl == 600 and cfg.tokens.max_ttl == 1800
    assert cfg.deployment("prod") is not None and cfg.deployment("nope") is None
    assert cfg.deployment("stage").proof.type == "private_key_jwt"
    orders = cfg.resource("orders-api")
    assert orders is not None and orders.upstream == "https://orders.example"  # trailing / cut
    assert cfg.resource_for_conn_id("adf").name == "adf"
    assert cfg.credential("adf-sp").type == "oauth2_client_credentials"
    assert cfg.credential("orders-key").overlap == 600  # default
    assert cfg.oidc_issuers[0].algorithms == ["RS256", "ES256", "EdDSA"]
    assert cfg.log_level == "debug"


def test_defaults_for_an_empty_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""))
    assert cfg.listeners.control.port == 8470 and cfg.listeners.http.port == 8471
    assert cfg.tokens.default_ttl == 900 and cfg.tokens.max_ttl == 3600
    assert cfg.tokens.leeway == 5
    assert cfg.deployments == [] and cfg.resources == [] and cfg.policies == []
    assert cfg.audit.write_timeout == 1.0 and cfg.audit.jsonl is None
    # the default data_dir also sits next to the config file
    assert cfg.data_dir == tmp_path.resolve() / "data"


def test_unknown_credential_reference(tmp_path: Path) -> None:
    data = valid()
    data["resources"][0]["credential"] = "orders-kee"
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg
    assert "resources[0].credential" in msg
    assert "unknown credential 'orders-kee'" in msg
    assert "expected one of ['adf-sp', 'orders-key']" in msg
    assert "<root>" not in msg and "Value error" not in msg


def test_duplicate_resource_names(tmp_path: Path) -> None:
    data = valid()
    data["resources"][1]["name"] = "orders-api"
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg
    assert "resources[1].name: duplicate name 'orders-api'" in msg
    assert "resources[0]" in msg and "unique" in msg


def test_duplicate_conn_id(tmp_path: Path) -> None:
    data = valid()
    data["resources"][1]["conn_id"] = "orders_api"
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg
    assert "resources[1].conn_id: duplicate conn_id 'orders_api'" in msg


def test_duplicate_deployment_and_credential_names(tmp_path: Path) -> None:
    data = valid()
    data["deployments"][1]["name"] = "prod"
    _, msg = error_of(tmp_path, data)
    assert "deployments[1].name: duplicate name 'prod'" in msg
    data = valid()
    data["credentials"].append({"name": "orders-key", "type": "static"})
    _, msg = error_of(tmp_path, data)
    assert "credentials[2].name: duplicate name 'orders-key'" in msg


def test_oidc_issuer_refuses_symmetric_algorithms(tmp_path: Path) -> None:
    data = valid()
    data["oidc_issuers"][0]["algorithms"] = ["RS256", "HS256"]
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg
    assert "oidc_issuers[0].algorithms" in msg and "HS256" in msg and "symmetric" in msg


@pytest.mark.parametrize("alg", ["none", "NONE", "hs512"])
def test_oidc_issuer_refuses_none_and_any_hs(tmp_path: Path, alg: str) -> None:
    data = valid()
    data["oidc_issuers"][0]["algorithms"] = [alg]
    _, msg = error_of(tmp_path, data)
    assert "oidc_issuers[0].algorithms" in msg and alg in msg


def test_oidc_issuer_unknown_deployment(tmp_path: Path) -> None:
    data = valid()
    data["oidc_issuers"][0]["deployment"] = "qa"
    _, msg = error_of(tmp_path, data)
    assert "oidc_issuers[0].deployment: unknown deployment 'qa'" in msg


def test_bad_proof_type_and_bad_url(tmp_path: Path) -> None:
    data = valid()
    data["deployments"][0]["proof"] = {"type": "password"}
    _, msg = error_of(tmp_path, data)
    assert "deployments[0].proof" in msg and "client_secret" in msg and "private_key_jwt" in msg
    data = valid()
    data["resources"][0]["upstream"] = "orders.example"
    _, msg = error_of(tmp_path, data)
    assert "resources[0].upstream" in msg and "http:// or https:// URL" in msg


def test_issuer_url_defaults_to_control_listener(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, valid()))
    assert cfg.issuer is None
    assert cfg.issuer_url == "https://127.0.0.1:9470"
    plain = parse_config({"listeners": {"control": {"host": "gw.local", "port": 80}}})
    assert plain.issuer_url == "http://gw.local:80"
    explicit = parse_config({"issuer": "https://lockgate.example/"})
    assert explicit.issuer_url == "https://lockgate.example"


def test_policy_files_glob_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "policies").mkdir()
    for name in ("b.yaml", "a.yaml", "notes.txt"):
        (tmp_path / "policies" / name).write_text("rules: []\n")
    (tmp_path / "policies" / "dir.yaml").mkdir()  # a directory is never a policy file
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x.yaml").write_text("rules: []\n")
    data = {"policies": ["policies/*.yaml", str(extra / "*.yaml"), "missing/*.yaml"]}
    path = write(tmp_path, data)
    monkeypatch.chdir(extra)  # relative globs follow the config file, not the cwd
    files = load_config(path).policy_files()
    base = tmp_path.resolve()
    assert files == [
        base / "policies" / "a.yaml",
        base / "policies" / "b.yaml",
        extra / "x.yaml",
    ]
