"""The Kubernetes ConfigMap's lockgate.yaml against a real PostgreSQL server, in the order
docs/deployment.md gives: a replica started before the migration Job refuses and names the
command; the Job's command migrates; the credential is stored once; two replicas named as
the StatefulSet names them start on it and answer /readyz with shared state ok."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import ssl
import sys
import urllib.request
from pathlib import Path

import pytest

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


def _readyz(url: str, ca: Path) -> tuple[int, dict[str, object]]:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the test cert names the Service, the test dials 127.0.0.1
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_configmap_runs_on_shared_state_as_documented(
    pg_state: SharedStateFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lockgate.server import Gateway

    settings = pg_state()
    assert settings.password_file is not None
    password = settings.password_file.read_text(encoding="utf-8").strip()
    replicas = []
    for name in ("lockgate-0", "lockgate-1"):
        replicas.append((name, _replica_config(tmp_path / name, settings.dsn, password)))
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

    async def serve_and_probe() -> list[tuple[int, dict[str, object]]]:
        from lockgate.server import Gateway

        gateways, answers = [], []
        try:
            for name, path in replicas:
                monkeypatch.setenv("LOCKGATE_REPLICA_ID", name)
                gateway = Gateway(load_config(path))
                await gateway.start()
                gateways.append(gateway)
            for gateway, (_, path) in zip(gateways, replicas, strict=True):
                url = f"https://127.0.0.1:{gateway.config.listeners.control.port}/readyz"
                ca = path.parents[2] / "tls-src" / "ca.pem"
                answers.append(await asyncio.to_thread(_readyz, url, ca))
        finally:
            for gateway in gateways:
                await gateway.stop()
        return answers

    for status, body in asyncio.run(serve_and_probe()):
        assert status == 200, body
        checks = body["checks"]
        assert isinstance(checks, dict) and checks.get("shared_state") == "ok", body
