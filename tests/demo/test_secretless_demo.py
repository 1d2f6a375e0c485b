"""``lockgate demo --secretless`` as a newcomer runs it: exit 0, lines of at most 100
columns, and every claim of its transcript true when checked against what it left behind
(the config, the audit trail, the worker's token file and dumped environment, the stand-ins'
own records, the gateway's stores), not only against its own words."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from lockgate.config import FederatedCredential, LockgateConfig, load_config
from lockgate.demo.report import WIDTH
from lockgate.demo.run_secretless import CLOUD_NAMES, SECRETLESS_DAGS
from lockgate.demo.secret_scan import SecretScan, credential_rows, dumped_env, key_ids_of_files
from lockgate.demo.secretless import ENV_DUMP_DAG_ID

pytest.importorskip("airflow.providers.microsoft.azure", reason="the Azure provider")
pytest.importorskip("airflow.providers.databricks", reason="the Databricks provider")
pytestmark = [pytest.mark.airflow, pytest.mark.slow]


@dataclass
class Demo:
    returncode: int
    lines: list[str]
    stdout: str
    workdir: Path

    @property
    def config(self) -> LockgateConfig:
        return load_config(self.workdir / "lockgate.yaml")

    def section(self, title: str) -> list[str]:
        """The lines after the heading that starts with ``title``, up to the next blank."""
        start = next(i for i, x in enumerate(self.lines) if x.strip().startswith(title))
        end = next((i for i in range(start + 1, len(self.lines)) if not self.lines[i]), None)
        return self.lines[start + 1 : end]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    cwd = tmp_path_factory.mktemp("secretless-demo")
    lockgate = Path(sys.executable).with_name("lockgate")
    proc = subprocess.run(
        [str(lockgate), "demo", "--secretless", "--dir", "d"],  # relative, as a newcomer types
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Demo(proc.returncode, proc.stdout.splitlines(), proc.stdout + proc.stderr, cwd / "d")


def test_it_exits_0_in_lines_of_100_columns_showing_no_token(demo: Demo) -> None:
    assert demo.returncode == 0, demo.stdout[-4000:]
    assert [x for x in demo.lines if len(x) > WIDTH] == []
    assert "eyJ" not in demo.stdout  # no JWT: no assertion, no worker token, no access token
    token = (demo.workdir / "worker/var/run/secrets/lockgate/token").read_text().strip()
    assert token not in demo.stdout
    assert re.search(r"demo took \d+ s", demo.stdout)


def test_each_dag_result_is_the_audit_trails(demo: Demo) -> None:
    from lockgate.state import State

    section = demo.section("DAG results")
    rows = [x for x in section if x.startswith("  [")]
    assert len(rows) == len(SECRETLESS_DAGS) + 1, section
    audit = State(demo.config).audit_log()
    try:
        for dag, (system, resource) in SECRETLESS_DAGS.items():
            row = next(x for x in rows if x.startswith(f"  [ok ] {dag} "))
            found = re.search(r"success\s+(.*): (\d+) allowed, (\d+) refused$", row)
            assert found and found.group(1) == system, row
            trail = audit.search(dag=dag, limit=1000)
            assert len({r.run_id for r in trail}) == 1, trail  # one run, this demo's
            allowed = [r for r in trail if r.event == "allowed" and r.resource == resource]
            assert allowed and int(found.group(2)) == len(allowed), (row, trail)
            assert int(found.group(3)) == 0 and not [r for r in trail if r.decision == "deny"]
            assert {r.deployment for r in trail} == {"prod"}
        assert any(x.startswith(f"  [ok ] {ENV_DUMP_DAG_ID} success") for x in rows)
        assert audit.verify().ok
    finally:
        audit.close()
    # the command it names for the audit trail works as printed, from where the demo ran
    hint = next(x for x in section if "audit trail: lockgate " in x).split(": ", 1)[1]
    argv = hint.replace("DAG", "finance_daily").split()
    lockgate = str(Path(sys.executable).with_name("lockgate"))
    printed = subprocess.run(
        [lockgate, *argv[1:]], cwd=demo.workdir.parent, capture_output=True, text=True,
        timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "airflow:prod/finance_daily/" in printed and " allowed " in printed, printed


def test_the_credentials_listed_are_all_federated(demo: Demo) -> None:
    shown = [x.strip() for x in demo.section("Upstream credentials (lockgate creds list)")]
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("lockgate")), "--config",
         str(demo.workdir / "lockgate.yaml"), "creds", "list"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert shown == [x.strip() for x in listed]
    credentials = demo.config.credentials
    assert credentials and all(isinstance(c, FederatedCredential) for c in credentials)
    assert f"{len(credentials)} of {len(credentials)} credentials hold no secret" in shown
    resources = ", ".join(r.name for r in demo.config.resources if r.credential)
    assert f"resources served with no stored secret: {resources}" in shown


def _cloud_lines(demo: Demo) -> Counter[tuple[str, str, str, str, str]]:
    """(cloud, alg, iss, sub, aud) -> count, as the transcript says."""
    rows = demo.section("What the clouds saw")
    said: Counter[tuple[str, str, str, str, str]] = Counter()
    names = {v: k for k, v in CLOUD_NAMES.items()}
    for head, tail in itertools.pairwise(rows):
        first = re.fullmatch(r"    (.+): (\d+) accepted, alg (\S+), iss (\S+)", head)
        if first is None:
            continue
        second = re.fullmatch(r"      sub (\S+), aud (\S+)", tail)
        assert second, tail
        sub, aud = second.groups()
        said[names[first.group(1)], first.group(3), first.group(4), sub, aud] = int(first[2])
    return said


def test_what_the_clouds_saw_is_their_records_and_the_config(demo: Demo) -> None:
    config = demo.config
    records = json.loads((demo.workdir / "clouds-saw.json").read_text())
    accepted = [
        (cloud, r["assertion_header"], r["assertion_claims"])
        for cloud in ("entra", "databricks")
        for r in records[cloud]
        if r.get("status", 200) == 200  # Databricks records only what it accepted
    ]
    recorded = Counter((cloud, h["alg"], c["iss"], c["sub"], c["aud"]) for cloud, h, c in accepted)
    assert _cloud_lines(demo) == recorded
    # what the config says each federated credential's assertion must be, one per credential
    expected = {
        (c.provider, config.federation_algorithm(c), config.issuer_url, c.assertion_subject,
         c.assertion_audience)
        for c in config.credentials
        if isinstance(c, FederatedCredential)
    }  # fmt: skip
    assert set(recorded) == expected
    assert {alg for _, alg, *_ in expected} == {"RS256", "ES256"}
    for r in records["entra"]:  # Entra took assertions, never a client secret
        assert "client_secret" not in r["form"], r
        assert r["form"]["client_assertion_type"].endswith(":client-assertion-type:jwt-bearer")
    discovery = f"{config.issuer_url}/.well-known/openid-configuration"
    for cloud, fetched in records["discovery_fetched"].items():
        assert discovery in fetched, cloud
    assert any(discovery in x and " read " in x for x in demo.section("What the clouds saw"))


def test_the_workers_proof_is_its_token_file(demo: Demo) -> None:
    rows = {x.split()[0]: x.split(None, 1)[1] for x in demo.section("The worker's proof")}
    token_file = demo.workdir.parent / rows["token"].split()[1]
    claims: dict[str, Any] = jwt.decode(
        token_file.read_text().strip(), options={"verify_signature": False}
    )
    (entry,) = demo.config.oidc_issuers
    assert claims["iss"] == entry.issuer and rows["issuer"].startswith(entry.issuer + " ")
    assert rows["subject"] == f"{claims['sub']}, audience {', '.join(claims['aud'])}"
    env = dumped_env(demo.workdir / "worker/tmp/task-environment.json")
    kwargs = json.loads(env["AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS"])
    in_the_worker = demo.workdir.resolve() / "worker/var/run/secrets/lockgate/token"
    assert kwargs["identity_token_file"] == str(in_the_worker)
    assert token_file.samefile(in_the_worker)
    assert f"settings in the task: {', '.join(sorted(kwargs))}" in rows["secrets"]
    assert not [k for k in kwargs if "secret" in k]


def test_the_scan_verdict_holds_when_scanned_again(demo: Demo) -> None:
    rows = demo.section("Secret scan")
    assert rows[-1] == "    verdict: nothing found"
    env = dumped_env(demo.workdir / "worker/tmp/task-environment.json")
    assert f"a task's environment     {len(env)} variables" in "\n".join(rows)
    data_dir = demo.config.data_dir
    assert credential_rows(data_dir / "credentials.db") == []
    assert "    the credential store     0 credentials stored" in rows
    # by shape (the known values died with the demo): no secret on the worker, and in the
    # gateway no private key but its own signing and TLS keys
    assert SecretScan().scan_tree(demo.workdir / "worker") == []
    own = key_ids_of_files([*(data_dir / "keys").glob("*.pem"), *(demo.workdir / "tls").glob("*")])
    assert own and SecretScan(own_keys=own).scan_tree(data_dir) == []


def test_it_keeps_the_data_of_another_stack_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory with another gateway's data (the normal demo's stored credentials) is
    not the secretless demo's to clear: refused, left as it was."""
    from lockgate.demo.run_secretless import main

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "credentials.db").write_bytes(b"stored")
    assert main(tmp_path) == 2
    said = " ".join(capsys.readouterr().out.split())
    assert "holds another Lockgate's data; choose another --dir" in said
    assert (tmp_path / "data" / "credentials.db").read_bytes() == b"stored"
