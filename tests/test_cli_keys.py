"""``lockgate keys list | rotate | retire`` with keys of several algorithms: each line names
its algorithm, each algorithm has its current key, ``--alg`` rotates one alone, and
``retire`` withdraws one the configuration dropped (never EdDSA or one it still names)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lockgate.cli import main


def keys(conf: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    code = main(["-c", str(conf), "keys", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.splitlines()


@pytest.fixture
def conf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    assert main(["init", str(tmp_path / "gw")]) == 0
    capsys.readouterr()
    path = tmp_path / "gw" / "lockgate.yaml"
    config = yaml.safe_load(path.read_text())
    config["signing"] = {"algorithms": ["EdDSA", "RS256", "ES256"]}
    path.write_text(yaml.safe_dump(config))
    return path


def test_keys_list_names_each_algorithm_and_its_current_key(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = keys(conf, capsys, "list")
    assert len(lines) == 3
    assert sorted(line.split()[1] for line in lines) == ["ES256", "EdDSA", "RS256"]
    assert all(line.endswith("current") for line in lines)


def test_keys_rotate_one_algorithm_publishes_it_ahead_and_leaves_the_others(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {line.split()[1]: line.split()[0] for line in keys(conf, capsys, "list")}
    (out,) = keys(conf, capsys, "rotate", "--alg", "RS256", "--retire-after", "60")
    new = out.split("new signing key ")[1].split(";")[0]
    assert "; RS256;" in out and "signs from" in out  # signing.publish_ahead: 300 s
    lines = {line.split()[0]: line for line in keys(conf, capsys, "list")}
    assert len(lines) == 4
    assert "published, signs from" in lines[new]
    assert lines[before["RS256"]].endswith("current")  # until the new one signs
    assert lines[before["EdDSA"]].endswith("current") and lines[before["ES256"]].endswith("current")


def test_keys_rotate_without_alg_rotates_every_algorithm(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = keys(conf, capsys, "rotate", "--retire-after", "0")
    assert sorted(line.split("; ")[1] for line in out) == ["ES256", "EdDSA", "RS256"]
    new = {line.split("new signing key ")[1].split(";")[0] for line in out}
    listed = keys(conf, capsys, "list")
    assert {line.split()[0] for line in listed} == new  # retire-after 0: the old ones are gone
    assert all(line.endswith("current") for line in listed)


def test_keys_rotate_refuses_an_unknown_algorithm(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["-c", str(conf), "keys", "rotate", "--alg", "HS256"])
    assert "HS256" in capsys.readouterr().err


def _drop(conf: Path, alg: str) -> None:
    """The configuration no longer names ``alg`` (no credential or audience needs it)."""
    config = yaml.safe_load(conf.read_text())
    config["signing"]["algorithms"].remove(alg)
    conf.write_text(yaml.safe_dump(config))


def refused(conf: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(["-c", str(conf), "keys", *argv])
    out, err = capsys.readouterr()
    assert code == 2 and not out
    assert len(err.splitlines()) == 1  # one line saying why, no trace
    return err


def test_keys_retire_refuses_eddsa_and_an_algorithm_the_config_needs(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = keys(conf, capsys, "list")
    assert "needs --alg" in refused(conf, capsys, "retire")
    assert "Lockgate's own tokens" in refused(conf, capsys, "retire", "--alg", "EdDSA")
    err = refused(conf, capsys, "retire", "--alg", "RS256", "--after", "0")
    assert "RS256 is still needed" in err and "configuration" in err
    assert keys(conf, capsys, "list") == before  # nothing retired


def test_keys_retire_withdraws_an_algorithm_after_the_token_lifetime(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rs256 = next(line.split()[0] for line in keys(conf, capsys, "list") if " RS256 " in line)
    _drop(conf, "RS256")
    *retired, summary = keys(conf, capsys, "retire", "--alg", "RS256")
    assert len(retired) == 1 and retired[0].startswith(f"signing key {rs256}; RS256; retires ")
    assert "now" not in retired[0] and "no longer rotates" in summary
    listed = {line.split()[0]: line for line in keys(conf, capsys, "list")}
    assert "retiring at" in listed[rs256] and "withdrawn" in listed[rs256]  # still published
    rotated = keys(conf, capsys, "rotate", "--retire-after", "0")
    assert sorted(line.split("; ")[1] for line in rotated) == ["ES256", "EdDSA"]
    assert "withdrawn" in {line.split()[0]: line for line in keys(conf, capsys, "list")}[rs256]
    assert "RS256" in refused(conf, capsys, "rotate", "--alg", "RS256")


def test_keys_retire_after_zero_removes_a_leaked_key_at_once(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(keys(conf, capsys, "list")) == 3  # the first open made a key of each
    _drop(conf, "ES256")
    (retired, _) = keys(conf, capsys, "retire", "--alg", "ES256", "--after", "0")
    assert retired.endswith("; ES256; retires now")
    listed = keys(conf, capsys, "list")
    assert sorted(line.split()[1] for line in listed) == ["EdDSA", "RS256"]
    assert "no ES256 signing key" in refused(conf, capsys, "retire", "--alg", "ES256")


def test_rotations_and_retirements_are_audited_with_kid_and_alg(
    conf: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    rotated = [line.split()[3].rstrip(";") for line in keys(conf, capsys, "rotate")]
    assert len(rotated) == 3  # one new key per algorithm in use
    config = yaml.safe_load(conf.read_text())
    config["signing"] = {"algorithms": ["EdDSA", "RS256"]}  # ES256 dropped
    conf.write_text(yaml.safe_dump(config))
    keys(conf, capsys, "retire", "--alg", "ES256", "--after", "0")
    assert main(["-c", str(conf), "audit", "search", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    by_event = {
        event: {(r["object"], r["detail"]["alg"]) for r in records if r["event"] == event}
        for event in ("key_rotated", "key_retired")
    }
    assert {kid for kid, _ in by_event["key_rotated"]} == set(rotated)
    assert {alg for _, alg in by_event["key_rotated"]} == {"EdDSA", "RS256", "ES256"}
    assert by_event["key_retired"] and {alg for _, alg in by_event["key_retired"]} == {"ES256"}
