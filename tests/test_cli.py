"""The ``lockgate`` CLI, run in-process on a scaffold written into tmp_path.

Every command's stdout and stderr go through :func:`run`, which also checks that the
credential value used here never shows up in any output.
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockgate.cli import main

VALUE = "upstream-s3cr3t-value-0123456789"
NEWER = "upstream-s3cr3t-value-rotated-9876"

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Run:
    def _run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        for text in (out, err, caplog.text):
            assert VALUE not in text and NEWER not in text
        return code, out, err

    return _run


@pytest.fixture
def conf(tmp_path: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``lockgate init``, with a fresh master key in the data dir (not from the env)."""
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    code, out, _ = run("init", str(tmp_path / "gw"))
    assert code == 0, out
    return tmp_path / "gw" / "lockgate.yaml"


def lg(conf: Path, *argv: str) -> tuple[str, ...]:
    return ("-c", str(conf), *argv)


# -- init and config -----------------------------------------------------------------------
def test_init_writes_a_working_directory(tmp_path: Path, conf: Path, run: Run) -> None:
    d = conf.parent
    for rel in ("lockgate.yaml", "deployment-prod.secret", "tls/ca.pem", "tls/key.pem"):
        assert (d / rel).is_file()
    assert (d / "policies" / "orders.yaml").is_file()
    code, out, err = run("init", str(d))
    assert code == 2 and "--force" in err and str(conf) in err
    code, out, _ = run("init", "--force", str(d))
    assert code == 0 and "creds set orders-api-key" in out and "SSL_CERT_FILE" in out
    # trust is added to the system store, never replaced by the dev CA alone
    assert "worker-bundle.pem" in out and "worker-ca.pem" not in out
    secret = (d / "deployment-prod.secret").read_text().strip()
    assert secret not in out  # the path of the secret is shown, never the secret


def test_init_no_tls(tmp_path: Path, run: Run) -> None:
    code, out, _ = run("init", "--no-tls", str(tmp_path / "plain"))
    assert code == 0
    assert "http://127.0.0.1:8470" in out and "SSL_CERT_FILE" not in out
    assert not (tmp_path / "plain" / "tls").exists()


def test_init_with_an_issuer_writes_no_secret_and_names_the_workers_settings(
    tmp_path: Path, run: Run
) -> None:
    from lockgate.config import load_config

    d = tmp_path / "k8s"
    code, out, _ = run("init", str(d), "--issuer", "https://oidc.example/cluster-1")
    assert code == 0, out
    assert not (d / "deployment-prod.secret").exists()
    assert "client_secret_file" not in out and str(d / "airflow-workers.cfg") in out
    cfg = load_config(d / "lockgate.yaml")
    prod = cfg.deployment("prod")
    assert prod is not None and prod.proof is None
    [entry] = cfg.oidc_issuers
    assert entry.issuer == "https://oidc.example/cluster-1" and entry.audience == "lockgate"
    assert '"identity_token_file"' in (d / "airflow-workers.cfg").read_text()

    code, _, err = run("init", str(tmp_path / "bad"), "--issuer", "http://oidc.example")
    assert code == 2 and "--issuer" in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"subjects": ["*"]}, "oidc_issuers[0].subjects: wildcards only"),
        ({"subjects": ["**"], "claims": {}}, "oidc_entry_unpinned"),
        ({"issuer": "https://127.0.0.1:8470"}, "oidc_issuers[0].issuer: Lockgate's own issuer"),
        ({"issuer": "http://k8s.example"}, "oidc_issuers[0].issuer: plain http"),
        ({"jwks_uri": "http://10.0.0.5/keys"}, "oidc_issuers[0].jwks_uri: plain http"),
    ],
)
def test_config_check_fails_on_an_issuer_entry_whose_every_token_would_be_refused(
    tmp_path: Path, run: Run, entry: dict[str, Any], expected: str
) -> None:
    import yaml

    code, out, _ = run("init", str(tmp_path / "gw"), "--issuer", "https://oidc.example/c1")
    assert code == 0, out
    conf = tmp_path / "gw" / "lockgate.yaml"
    config = yaml.safe_load(conf.read_text())
    config["oidc_issuers"][0].update(entry)
    if "claims" not in entry and entry.get("subjects") == ["*"]:
        config["oidc_issuers"][0].pop("claims", None)
    conf.write_text(yaml.safe_dump(config))
    code, _, err = run(*lg(conf, "config", "check"))
    assert code == 2 and expected in err and str(conf) in err


def test_config_check(conf: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(*lg(conf, "config", "check"))
    assert code == 0
    assert str(conf) in out and "ok" in out and "1 policy file(s)" in out
    # $LOCKGATE_CONFIG when no --config is given
    monkeypatch.setenv("LOCKGATE_CONFIG", str(conf))
    code, out, _ = run("config", "check")
    assert code == 0 and str(conf) in out


def test_bad_config_exits_2_naming_file_and_field(conf: Path, run: Run) -> None:
    text = conf.read_text().replace("port: 8471", 'port: "abc"')
    conf.write_text(text)
    for argv in (("config", "check"), ("keys", "list"), ("policy", "lint")):
        code, out, err = run(*lg(conf, *argv))
        assert code == 2 and out == ""
        assert str(conf) in err and "listeners.http.port" in err and "'abc'" in err
        assert "Traceback" not in err


def test_missing_config_exits_2(tmp_path: Path, run: Run) -> None:
    missing = tmp_path / "nope.yaml"
    code, _, err = run("-c", str(missing), "config", "check")
    assert code == 2 and str(missing) in err and "cannot read" in err


# -- policy ---------------------------------------------------------------------------------
def test_policy_check_allow_and_deny(conf: Path, run: Run) -> None:
    principal = "airflow:prod/finance_daily/load"
    code, out, _ = run(*lg(conf, "policy", "check", principal, "read", "orders-api/orders"))
    assert code == 0
    assert out.startswith("ALLOW") and "finance-read-orders" in out

    code, out, _ = run(*lg(conf, "policy", "check", principal, "write", "orders-api/orders"))
    assert code == 1
    assert out.startswith("DENY") and "no rule" in out

    code, out, _ = run(*lg(conf, "policy", "check", principal, "admin", "orders-api/orders"))
    assert code == 1 and "no-admin-on-orders" in out  # an explicit deny names its rule


def test_policy_lint_on_scaffold(conf: Path, run: Run) -> None:
    code, out, _ = run(*lg(conf, "policy", "lint"))
    assert code == 0 and "no problems found" in out
    code, _, _ = run(*lg(conf, "policy", "lint", "--strict"))
    assert code == 0


def test_policy_lint_reports_an_overbroad_rule(conf: Path, run: Run) -> None:
    (conf.parent / "policies" / "extra.yaml").write_text(
        "rules:\n"
        "  - id: everyone-everything\n"
        "    effect: allow\n"
        '    principals: ["*"]\n'
        '    actions: ["*"]\n'
        "    resources: [orders-api]\n"
    )
    code, out, _ = run(*lg(conf, "policy", "lint"))
    assert code == 1
    assert "everyone-everything" in out and "every principal" in out
    assert "covered by allow rule everyone-everything" in out  # the scaffold rules, shadowed


def test_policy_naming_an_unknown_resource_is_refused(conf: Path, run: Run) -> None:
    (conf.parent / "policies" / "extra.yaml").write_text(
        "rules:\n"
        "  - id: ghost\n"
        "    effect: allow\n"
        '    principals: ["airflow:prod/x/*"]\n'
        "    actions: [read]\n"
        "    resources: [no-such-resource]\n"
    )
    code, out, err = run(*lg(conf, "policy", "lint"))
    assert code == 2 and out == ""
    assert "extra.yaml" in err and "ghost" in err and "no-such-resource" in err


def test_policy_test_passing_and_failing(conf: Path, run: Run) -> None:
    scaffold_tests = conf.parent / "policy-tests" / "orders.yaml"
    code, out, _ = run(*lg(conf, "policy", "test", str(scaffold_tests)))
    assert code == 0 and "3 passed, 0 failed" in out

    failing = conf.parent / "policy-tests" / "wrong.yaml"
    failing.write_text(
        "tests:\n"
        "  - name: marketing may write orders (it may not)\n"
        "    principal: airflow:prod/marketing_daily/peek\n"
        "    action: write\n"
        "    resource: orders-api\n"
        "    object: /orders\n"
        "    expect: allow\n"
    )
    code, out, _ = run(*lg(conf, "policy", "test", str(scaffold_tests), str(failing)))
    assert code == 1
    assert "marketing may write orders" in out and "0 passed, 1 failed" in out

    broken = conf.parent / "policy-tests" / "broken.yaml"
    broken.write_text("tests:\n  - name: x\n    expect: maybe\n")
    code, out, _ = run(*lg(conf, "policy", "test", str(broken)))
    assert code == 2 and "broken.yaml" in out


def test_config_check_loads_the_policy_files(conf: Path, run: Run) -> None:
    extra = conf.parent / "policies" / "extra.yaml"
    extra.write_text(
        "rules:\n"
        "  - id: ghost\n"
        "    effect: allow\n"
        '    principals: ["airflow:prod/x/*"]\n'
        "    actions: [read]\n"
        "    resources: [orders-api, no-such-resource]\n"
    )
    code, out, err = run(*lg(conf, "config", "check"))
    assert code == 2 and out == "" and "ok" not in err
    # file:line: field (rule): what is wrong
    assert f"{extra}:6: rules[0].resources[1] (rule ghost): unknown resource" in err
    assert "'no-such-resource'" in err

    # a glob naming nothing is as dead as a typo
    extra.write_text(extra.read_text().replace("no-such-resource", "no-such-*"))
    code, _, err = run(*lg(conf, "config", "check"))
    assert code == 2
    assert f"{extra}:6: rules[0].resources[1] (rule ghost):" in err and "'no-such-*'" in err

    # every broken file is reported, each with its line and field
    extra.write_text(extra.read_text().replace("effect: allow", "effect: alow"))
    (conf.parent / "policies" / "more.yaml").write_text("rules:\n  - id: y\n   effect: [\n")
    code, _, err = run(*lg(conf, "config", "check"))
    assert code == 2
    assert f"{extra}:3: rules[0].effect (rule ghost): expected one of allow, deny" in err
    assert "more.yaml: line 3 column 4: not valid YAML" in err


def test_config_check_when_no_policy_file_matches(conf: Path, run: Run) -> None:
    for f in (conf.parent / "policies").iterdir():
        f.unlink()
    code, _, err = run(*lg(conf, "config", "check"))
    assert code == 2 and "no file matches" in err and "policies/*.yaml" in err


def test_policy_check_says_what_is_unknown(conf: Path, run: Run) -> None:
    code, out, err = run(*lg(conf, "policy", "check", "airflow:prod/finance_daily/t", "read",
                             "no-such-api/orders"))  # fmt: skip
    assert code == 2 and out == "" and "DENY" not in err
    assert "unknown resource 'no-such-api'" in err and "orders-api" in err

    code, out, err = run(*lg(conf, "policy", "check", "airflow:staging/finance_daily/t", "read",
                             "orders-api/orders"))  # fmt: skip
    assert code == 2 and "unknown deployment 'staging'" in err and "prod" in err

    code, _, err = run(*lg(conf, "policy", "check", "finance_daily", "read", "orders-api"))
    assert code == 2 and "airflow:DEPLOYMENT/DAG/TASK" in err

    # policy alone would allow this DAG, but its deployment is not delegated it
    (conf.parent / "policies" / "extra.yaml").write_text(
        "rules:\n"
        "  - id: hr-read\n"
        "    effect: allow\n"
        '    principals: ["airflow:prod/hr_daily/*"]\n'
        "    actions: [read]\n"
        "    resources: [orders-api]\n"
    )
    code, out, _ = run(*lg(conf, "policy", "check", "airflow:prod/hr_daily/t", "read",
                           "orders-api/orders"))  # fmt: skip
    assert code == 1 and out.startswith("DENY") and "allowed by rule hr-read" in out
    assert "may not act for dag hr_daily" in out and "no token would be minted" in out


# -- credentials ----------------------------------------------------------------------------
def test_creds_set_list_rotate(conf: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(*lg(conf, "creds", "list"))
    assert code == 0 and "NOT SET" in out

    monkeypatch.setenv("ORDERS_KEY", VALUE)
    code, out, _ = run(*lg(conf, "creds", "set", "orders-api-key", "--from-env", "ORDERS_KEY"))
    assert code == 0 and "version 1" in out

    code, out, _ = run(*lg(conf, "creds", "list"))
    assert code == 0 and "orders-api-key" in out and "version 1" in out and "static" in out

    monkeypatch.setenv("ORDERS_KEY", NEWER)
    code, out, _ = run(*lg(conf, "creds", "rotate", "orders-api-key", "--from-env", "ORDERS_KEY"))
    assert code == 0 and "version 2" in out and "600s" in out
    code, out, _ = run(*lg(conf, "creds", "list"))
    assert "version 2" in out

    # never stored in clear anywhere under the config directory
    for f in conf.parent.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert VALUE.encode() not in data and NEWER.encode() not in data, f


def test_creds_from_stdin_and_file(
    conf: Path, run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(VALUE + "\n"))
    code, out, _ = run(*lg(conf, "creds", "set", "orders-api-key"))
    assert code == 0 and "version 1" in out
    value_file = tmp_path / "value.txt"
    value_file.write_text(NEWER)
    code, out, _ = run(
        *lg(conf, "creds", "rotate", "orders-api-key", "--from-file", str(value_file))
    )
    assert code == 0 and "version 2" in out
    code, _, err = run(
        *lg(conf, "creds", "set", "orders-api-key", "--from-file", str(tmp_path / "gone"))
    )
    assert code == 2 and "gone" in err and "Traceback" not in err


def test_creds_errors(conf: Path, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_KEY", VALUE)
    code, out, err = run(*lg(conf, "creds", "set", "orders-api-kee", "--from-env", "ORDERS_KEY"))
    assert code == 2 and out == ""
    assert "orders-api-kee" in err and "orders-api-key" in err  # what exists is listed
    assert not (conf.parent / "data").exists()  # a typo opens no state
    code, _, err = run(*lg(conf, "creds", "rotate", "nope", "--from-env", "ORDERS_KEY"))
    assert code == 2 and "'nope'" in err
    monkeypatch.delenv("UNSET_VAR", raising=False)
    code, _, err = run(*lg(conf, "creds", "set", "orders-api-key", "--from-env", "UNSET_VAR"))
    assert code == 2 and "UNSET_VAR" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    code, _, err = run(*lg(conf, "creds", "set", "orders-api-key"))
    assert code == 2 and "empty" in err


# -- keys and tokens ------------------------------------------------------------------------
def test_keys_rotate_and_list(conf: Path, run: Run) -> None:
    code, out, _ = run(*lg(conf, "keys", "list"))
    assert code == 0 and len(out.splitlines()) == 1 and "current" in out
    first = out.split()[0]

    code, out, _ = run(*lg(conf, "keys", "rotate"))
    assert code == 0 and "new signing key" in out and "3900s" in out  # max_ttl + 300
    new = out.split("new signing key ")[1].split(";")[0]

    code, out, _ = run(*lg(conf, "keys", "list"))
    lines = out.splitlines()
    assert len(lines) == 2
    assert any(ln.startswith(first) and "retires at" in ln for ln in lines)
    assert any(ln.startswith(new) and "current" in ln for ln in lines)

    code, _, err = run(*lg(conf, "keys", "rotate", "--retire-after", "-1"))
    assert code == 2 and "--retire-after" in err


def test_token_revoke_and_revocations(conf: Path, run: Run) -> None:
    code, out, _ = run(*lg(conf, "token", "revoke", "--jti", "jti-123"))
    assert code == 0 and "revoked token jti-123" in out
    code, out, _ = run(
        *lg(conf, "token", "revoke", "--dag", "finance_daily", "--run", "r1", "--reason", "leak")
    )
    assert code == 0 and "finance_daily" in out and "r1" in out
    code, _, err = run(*lg(conf, "token", "revoke"))
    assert code == 2 and "--jti, --dag or --deployment" in err

    code, out, _ = run(*lg(conf, "token", "revocations"))
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["jti"]["target"]["jti"] == "jti-123"
    dag = by_kind["dag"]
    assert dag["target"]["dag_id"] == "finance_daily" and dag["target"]["run_id"] == "r1"
    assert dag["reason"] == "leak"


def test_token_block_and_unblock(conf: Path, run: Run) -> None:
    code, out, _ = run(*lg(conf, "token", "revoke", "--dag", "finance_daily", "--block",
                           "--reason", "incident 42"))  # fmt: skip
    assert code == 0
    assert "DAG finance_daily is blocked by operator " in out and ": incident 42" in out
    code, out, _ = run(*lg(conf, "token", "revoke", "--deployment", "prod", "--block"))
    assert code == 0 and "every DAG of deployment prod is blocked" in out

    code, out, _ = run(*lg(conf, "token", "revocations"))
    rows = [json.loads(line) for line in out.splitlines()]
    blocks = {(r["target"]["deployment"], r["target"]["dag_id"]): r for r in rows
              if r["kind"] == "block"}  # fmt: skip
    assert set(blocks) == {(None, "finance_daily"), ("prod", None)}
    dag_block = blocks[(None, "finance_daily")]
    assert dag_block["by"].startswith("operator ") and dag_block["reason"] == "incident 42"
    assert dag_block["since"] > 0 and dag_block["expires_at"] is None
    # the block also revoked what was live
    assert {(r["target"]["deployment"], r["target"]["dag_id"]) for r in rows
            if r["kind"] == "dag"} == {(None, "finance_daily"), ("prod", None)}  # fmt: skip

    code, out, _ = run(*lg(conf, "audit", "search", "--event", "mint_blocked", "--json"))
    assert [json.loads(line)["dag_id"] for line in out.splitlines()] in (
        ["finance_daily", None],
        [None, "finance_daily"],
    )

    assert run(*lg(conf, "token", "unblock", "--dag", "finance_daily"))[0] == 0
    code, _, err = run(*lg(conf, "token", "unblock", "--dag", "finance_daily"))
    assert code == 1 and "no block on dag finance_daily" in err
    assert run(*lg(conf, "token", "unblock", "--deployment", "prod"))[0] == 0
    code, out, _ = run(*lg(conf, "token", "revocations"))
    assert '"block"' not in out
    code, out, _ = run(*lg(conf, "audit", "search", "--event", "mint_unblocked", "--json"))
    assert len(out.splitlines()) == 2

    # what a kill switch cannot be: vague, a typo, or about one token
    assert run(*lg(conf, "token", "revoke", "--block"))[0] == 2
    assert run(*lg(conf, "token", "revoke", "--jti", "j1", "--block"))[0] == 2
    assert run(*lg(conf, "token", "revoke", "--dag", "d", "--run", "r", "--block"))[0] == 2
    code, _, err = run(*lg(conf, "token", "revoke", "--deployment", "prd", "--block"))
    assert code == 2 and "no deployment named 'prd'" in err
    # a DAG no deployment may act for is blocked anyway (it may come), with a warning
    code, _, err = run(*lg(conf, "token", "revoke", "--dag", "hr_daily", "--block"))
    assert code == 0 and "no configured deployment may act for dag hr_daily" in err


# -- audit ----------------------------------------------------------------------------------
def test_audit_tail_search_verify_and_tamper(
    conf: Path, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, _ = run(*lg(conf, "audit", "tail"))
    assert code == 0 and "no audit records" in out
    code, out, _ = run(*lg(conf, "audit", "verify"))
    assert code == 0 and "0 records" in out

    monkeypatch.setenv("ORDERS_KEY", VALUE)
    assert run(*lg(conf, "creds", "set", "orders-api-key", "--from-env", "ORDERS_KEY"))[0] == 0
    assert run(*lg(conf, "token", "revoke", "--dag", "finance_daily", "--run", "r1"))[0] == 0
    assert run(*lg(conf, "token", "revoke", "--dag", "orders_load"))[0] == 0

    code, out, _ = run(*lg(conf, "audit", "tail"))
    assert code == 0
    assert "credential_set" in out and out.count("token_revoked") == 2

    code, out, _ = run(*lg(conf, "audit", "search", "--dag", "finance_daily", "--json"))
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["event"], r["dag_id"], r["run_id"]) for r in rows] == [
        ("token_revoked", "finance_daily", "r1")
    ]
    code, out, _ = run(*lg(conf, "audit", "search", "--event", "credential_set", "--json"))
    assert [json.loads(line)["object"] for line in out.splitlines()] == ["orders-api-key"]

    code, out, _ = run(*lg(conf, "audit", "verify"))
    assert code == 0 and "intact: 3 records" in out

    # Someone with write access to the file edits record 2 behind Lockgate's back.
    db = sqlite3.connect(conf.parent / "data" / "audit.db")
    with db:
        db.execute("DROP TRIGGER audit_no_update")
        db.execute("UPDATE audit SET dag_id = 'innocent_dag' WHERE seq = 2")
    db.close()
    code, out, _ = run(*lg(conf, "audit", "verify"))
    assert code == 1
    assert "BROKEN" in out and "record 2" in out
