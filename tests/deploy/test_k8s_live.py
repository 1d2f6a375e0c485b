"""The Kubernetes ConfigMap's lockgate.yaml against a real PostgreSQL server, in the order
docs/deployment.md gives: a replica started before the migration Job refuses and names the
command; the Job's command migrates; the credential is stored once; a replica given another
master key refuses; two replicas named as the StatefulSet names them start on it, answer
/readyz with shared state ok, and a token minted by one (the ConfigMap's private_key_jwt
deployment) is honoured by the other under the ConfigMap's policy."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import ssl
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate.cli import main as lockgate_main
from lockgate.config import load_config
from lockgate.demo.stack import free_port
from lockgate.errors import LockgateError
from tests.deploy._manifests import materialise, one
from tests.pgserver.fixtures import SharedStateFactory

pytestmark = pytest.mark.slow


def _cli(*argv: str, stdin: str = "") -> tuple[int, str]:
    """Run the real CLI in-process; its exit code and everything it printed."""
    out = io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(out),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            code = lockgate_main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue()


def _replica_config(root: Path, dsn: str, password: str) -> Path:
    """The ConfigMap's files below ``root``, pointed at the test server, on loopback ports."""
    path = materialise(root)
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^(\s*dsn: ).*$", lambda m: m.group(1) + dsn, text)
    text = text.replace("host: 0.0.0.0", "host: 127.0.0.1")
    for port in ("8470", "8471", "9042"):
        text = text.replace(f"port: {port}", f"port: {free_port()}")
    path.write_text(text, encoding="utf-8")
    (root / "etc/lockgate/db/password").write_text(password, encoding="utf-8")
    return path


def _call(
    url: str, ca: Path, *, form: dict[str, str] | None = None, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    """One HTTPS request to a replica; its status and JSON body ({} when not JSON)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the test cert names the Service, the test dials 127.0.0.1
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    return status, body if isinstance(body, dict) else {}


def _assertion(key: Ed25519PrivateKey, issuer: str) -> str:
    """What the prod deployment's Airflow signs to ask for a token (private_key_jwt)."""
    now = int(time.time())
    claims = {"iss": "prod", "sub": "prod", "aud": f"{issuer}/v1/token", "iat": now,
              "exp": now + 60, "jti": uuid.uuid4().hex}  # fmt: skip
    return jwt.encode(claims, key, algorithm="EdDSA")


def test_the_configmap_runs_on_shared_state_as_documented(
    pg_state: SharedStateFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.server import Gateway

    settings = pg_state()
    assert settings.password_file is not None
    password = settings.password_file.read_text(encoding="utf-8").strip()
    replicas = []
    # the prod deployment's key pair: its public half where the ConfigMap puts prod.pem
    airflow_key = Ed25519PrivateKey.generate()
    public_pem = airflow_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for name in ("lockgate-0", "lockgate-1"):
        replicas.append((name, _replica_config(tmp_path / name, settings.dsn, password)))
        (tmp_path / name / "etc/lockgate/deployments/prod.pem").write_bytes(public_pem)
    first = replicas[0][1]
    # one master key for every replica (the lockgate-master-key Secret)
    key = (tmp_path / "lockgate-0" / "run/lockgate/master.key").read_bytes()
    (tmp_path / "lockgate-1" / "run/lockgate/master.key").write_bytes(key)
    job = one("Job", "lockgate-db-upgrade")["spec"]["template"]["spec"]["containers"][0]

    # before the Job: migrate_on_start is false, so a replica refuses and names the command
    monkeypatch.setenv("LOCKGATE_REPLICA_ID", "lockgate-0")
    with pytest.raises(LockgateError, match="lockgate db upgrade"):
        Gateway(load_config(first))
    code, out = _cli("db", "check", "--config", str(first))
    assert code == 1, out

    # the Job: its own arguments, with the config where this test put it
    args = [str(first) if a == "/etc/lockgate/lockgate.yaml" else a for a in job["args"]]
    code, out = _cli(*args)
    assert code == 0, out
    assert _cli("db", "check", "--config", str(first))[0] == 0

    # the upstream credential, stored once for every replica
    code, out = _cli("creds", "set", "orders-api-key", "--config", str(first), stdin="k-1\n")
    assert code == 0, out

    # a replica given another master key refuses to start, naming the settings
    stranger = _replica_config(tmp_path / "lockgate-9", settings.dsn, password)
    monkeypatch.setenv("LOCKGATE_REPLICA_ID", "lockgate-9")
    with pytest.raises(LockgateError, match="same LOCKGATE_MASTER_KEY or master_key_file"):
        Gateway(load_config(stranger))

    async def serve_and_probe() -> dict[str, tuple[int, dict[str, Any]]]:
        from lockgate.server import Gateway

        gateways, answers = [], {}
        ca = tmp_path / "lockgate-0" / "tls-src" / "ca.pem"
        try:
            for name, path in replicas:
                monkeypatch.setenv("LOCKGATE_REPLICA_ID", name)
                gateway = Gateway(load_config(path))
                await gateway.start()
                gateways.append(gateway)
            for gateway, (name, _) in zip(gateways, replicas, strict=True):
                url = f"https://127.0.0.1:{gateway.config.listeners.control.port}/readyz"
                answers[f"readyz {name}"] = await asyncio.to_thread(
                    _call, url, tmp_path / name / "tls-src" / "ca.pem"
                )
            # a token minted by lockgate-0 ...
            zero, one_ = gateways
            mint = {
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": _assertion(airflow_key, zero.config.issuer_url),
                "client_id": "prod", "resource": "orders-api", "dag_id": "finance_daily",
                "task_id": "load", "run_id": "scheduled__1", "try_number": "1",
            }  # fmt: skip
            control = f"https://127.0.0.1:{zero.config.listeners.control.port}"
            answers["mint"] = await asyncio.to_thread(_call, f"{control}/v1/token", ca, form=mint)
            token = str(answers["mint"][1].get("access_token", ""))
            # ... is honoured by lockgate-1 (its TLS material is its own copy of the Secret)
            ca_one = tmp_path / "lockgate-1" / "tls-src" / "ca.pem"
            http = f"https://127.0.0.1:{one_.config.listeners.http.port}/orders-api"
            answers["read"] = await asyncio.to_thread(_call, f"{http}/orders/o-1", ca_one,
                                                      token=token)  # fmt: skip
            answers["write"] = await asyncio.to_thread(
                _call, f"{http}/orders", ca_one, token=token, form={"id": "o-2"}
            )
        finally:
            for gateway in gateways:
                await gateway.stop()
        return answers

    answers = asyncio.run(serve_and_probe())
    for name, _ in replicas:
        status, body = answers[f"readyz {name}"]
        assert status == 200, body
        assert body["checks"]["shared_state"] == "ok", body
    assert answers["mint"][0] == 200, answers["mint"]
    # allowed by the ConfigMap's policy on the other replica; the example upstream does not
    # exist here, so the gateway answers for it (not 401: the token verified)
    assert answers["read"][0] == 502, answers["read"]
    assert answers["read"][1].get("error") == "upstream_unreachable", answers["read"]
    assert answers["write"][0] == 403, answers["write"]  # finance may only read
