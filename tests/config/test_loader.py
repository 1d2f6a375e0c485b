"""Reading lockgate.yaml: every kind of mistake names the file, the line, the field and what
was expected; relative paths follow the config file, not the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from lockgate.config import load_config, parse_config
from lockgate.config.identity import PrivateKeyJwtProof
from lockgate.errors import ConfigError
from tests.config._files import error_of, valid, write


def test_unknown_top_level_field(tmp_path: Path) -> None:
    path, msg = error_of(tmp_path, {**valid(), "resorces": []})
    assert str(path) in msg
    assert f"{path}:" in msg and "resorces: unknown field; did you mean 'resources'?" in msg


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
    path, msg = error_of(tmp_path, text)
    assert f"\n  {path}:2: listeners.http.port: " in msg
    # A missing field points at the nearest enclosing one that is there.
    assert f"\n  {path}:8: resources[0].routes[0].action: Field required" in msg
    fixed = text.replace("port: abc", "port: 1").replace("- path: /x", "- {path: /x, action: read}")
    _, msg = error_of(tmp_path, fixed)
    # A check across sections names its field in the message, and the line follows it.
    assert f"\n  {path}:9: resources[1].name: duplicate name 'a'" in msg


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
    tls = cfg.listeners.control.tls
    assert tls is not None
    assert tls.cert == base / "tls" / "cert.pem"
    assert tls.key == base / "tls" / "key.pem"
    stage = cfg.deployment("stage")
    assert stage is not None and isinstance(stage.proof, PrivateKeyJwtProof)
    assert stage.proof.public_key == base / "keys" / "stage.pem"
    orders = cfg.resource("orders-api")
    assert orders is not None and orders.ca_file == base / "ca" / "upstream.pem"
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
