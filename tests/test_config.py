"""lockgate.yaml: a valid file loads; every kind of mistake names the file, the field and
what was expected; relative paths follow the config file, not the working directory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from lockgate.config import LockgateConfig, load_config, parse_config
from lockgate.errors import ConfigError

SHA = hashlib.sha256(b"deployment secret").hexdigest()


def valid() -> dict[str, Any]:
    """A complete configuration touching every section."""
    return {
        "data_dir": "./state",
        "listeners": {
            "control": {
                "host": "127.0.0.1",
                "port": 9470,
                "tls": {"cert": "tls/cert.pem", "key": "tls/key.pem"},
            },
            "http": {"host": "127.0.0.1", "port": 9471},
        },
        "tokens": {"default_ttl": 600, "max_ttl": 1800, "leeway": 3},
        "deployments": [
            {
                "name": "prod",
                "proof": {"type": "client_secret", "secret_sha256": SHA},
                "dags": ["finance_*"],
                "airflow_api": {"url": "https://airflow.example", "token_env": "AF_TOKEN"},
            },
            {
                "name": "stage",
                "proof": {"type": "private_key_jwt", "public_key": "keys/stage.pem"},
                "dags": ["*"],
            },
        ],
        "oidc_issuers": [
            {
                "issuer": "https://login.example/tenant/v2.0",
                "audience": "api://lockgate",
                "deployment": "prod",
                "subjects": ["system:serviceaccount:airflow:*"],
            }
        ],
        "resources": [
            {
                "name": "orders-api",
                "kind": "http",
                "upstream": "https://orders.example/",
                "credential": "orders-key",
                "conn_id": "orders_api",
                "routes": [{"method": "GET", "path": "/orders/*", "action": "read"}],
                "ca_file": "ca/upstream.pem",
            },
            {
                "name": "adf",
                "kind": "http",
                "upstream": "https://management.azure.com",
                "credential": "adf-sp",
                "conn_id": "adf",
            },
        ],
        "credentials": [
            {"name": "orders-key", "type": "static"},
            {
                "name": "adf-sp",
                "type": "oauth2_client_credentials",
                "token_url": "https://login.example/token",
                "client_id": "abc",
                "scope": "https://management.azure.com/.default",
            },
        ],
        "policies": ["policies/*.yaml"],
        "audit": {"jsonl": "audit/audit.jsonl", "write_timeout": 2.0},
        "log_level": "debug",
    }


def write(tmp_path: Path, data: Any, name: str = "lockgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error_of(tmp_path: Path, data: Any) -> tuple[Path, str]:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return path, str(info.value)


# -- a valid file ---------------------------------------------------------------------------
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


# -- errors: file, field path, what was expected --------------------------------------------
def test_unknown_top_level_field(tmp_path: Path) -> None:
    path, msg = error_of(tmp_path, {**valid(), "resorces": []})
    assert str(path) in msg
    assert "resorces" in msg and "Extra inputs are not permitted" in msg


def test_wrong_type_port(tmp_path: Path) -> None:
    data = valid()
    data["listeners"]["http"]["port"] = "abc"
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg
    assert "listeners.http.port" in msg
    assert "valid integer" in msg and "'abc'" in msg


def test_port_out_of_range(tmp_path: Path) -> None:
    data = valid()
    data["listeners"]["control"]["port"] = 70000
    _, msg = error_of(tmp_path, data)
    assert "listeners.control.port" in msg and "65535" in msg


def test_bad_enum_kind(tmp_path: Path) -> None:
    data = valid()
    data["resources"][1]["kind"] = "ftp"
    path, msg = error_of(tmp_path, data)
    assert str(path) in msg
    assert "resources[1].kind" in msg and "'http'" in msg and "'ftp'" in msg


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


def test_several_errors_are_all_listed(tmp_path: Path) -> None:
    data = valid()
    data["tokens"]["max_ttl"] = 0
    data["log_level"] = "loud"
    _, msg = error_of(tmp_path, data)
    assert "tokens.max_ttl" in msg and "log_level" in msg


def test_a_pasted_secret_is_not_echoed(tmp_path: Path) -> None:
    # Someone pastes the secret itself where its hash belongs: the error must not repeat it.
    data = valid()
    data["deployments"][0]["proof"]["secret_sha256"] = "hunter2-the-real-secret"
    _, msg = error_of(tmp_path, data)
    assert "secret_sha256" in msg and "pattern" in msg
    assert "hunter2" not in msg


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    text = "data_dir: ./data\nlisteners:\n  control: {port: 8470\n  http: [\n"
    path, msg = error_of(tmp_path, text)
    assert str(path) in msg and "not valid YAML" in msg
    assert "line " in msg
    line = int(msg.split("line ")[1].split()[0])
    assert 3 <= line <= 5


def test_errors_name_the_line_of_the_field(tmp_path: Path) -> None:
    text = (
        "listeners:\n"
        "  http: {port: abc}\n"
        "resources:\n"
        "  - name: a\n"
        "    kind: http\n"
        "    upstream: https://a.example\n"
        "    routes:\n"
        "      - path: /x\n"
        "  - name: a\n"
        "    kind: http\n"
        "    upstream: https://b.example\n"
    )
    _, msg = error_of(tmp_path, text)
    assert "line 2: listeners.http.port: " in msg
    # A missing field points at the nearest enclosing one that is there.
    assert "line 8: resources[0].routes[0].action: Field required" in msg
    fixed = text.replace("port: abc", "port: 1").replace("- path: /x", "- {path: /x, action: read}")
    _, msg = error_of(tmp_path, fixed)
    # A check across sections names its field in the message, and the line follows it.
    assert "line 9: resources[1].name: duplicate name 'a'" in msg


def test_parsed_data_has_no_lines_to_name() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": {"http": {"port": "abc"}}})
    assert "\n  listeners.http.port: " in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path, msg = error_of(tmp_path, "- a\n- b\n")
    assert str(path) in msg and "mapping" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and "cannot read" in str(info.value)


# -- paths --------------------------------------------------------------------------------
def test_relative_paths_resolve_against_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "lockgate"
    conf_dir.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    cfg = load_config(write(conf_dir, valid()))
    base = conf_dir.resolve()
    assert cfg.data_dir == base / "state"
    assert cfg.listeners.control.tls.cert == base / "tls" / "cert.pem"
    assert cfg.listeners.control.tls.key == base / "tls" / "key.pem"
    assert cfg.deployment("stage").proof.public_key == base / "keys" / "stage.pem"
    assert cfg.resource("orders-api").ca_file == base / "ca" / "upstream.pem"
    assert cfg.audit.jsonl == base / "audit" / "audit.jsonl"


def test_config_file_without_suffix_still_resolves_against_its_dir(tmp_path: Path) -> None:
    path = write(tmp_path, {"data_dir": "d"}, name="lockgate")
    assert load_config(path).data_dir == tmp_path.resolve() / "d"


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    data = valid()
    data["data_dir"] = str(tmp_path / "abs-state")
    cfg = load_config(write(tmp_path / "", data))
    assert cfg.data_dir == tmp_path / "abs-state"


def test_parse_config_without_a_file_uses_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse_config({"data_dir": "x"})
    assert cfg.data_dir == tmp_path.resolve() / "x" and cfg.source is None
    with pytest.raises(ConfigError) as info:
        parse_config({"bogus": 1}, "<test>")
    assert str(info.value).startswith("<test>: invalid configuration")


# -- issuer and policies -------------------------------------------------------------------
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
