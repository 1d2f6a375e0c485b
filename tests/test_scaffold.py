"""``lockgate init``: the scaffold validates, keeps secrets private, and its TLS works."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from lockgate.config import load_config
from lockgate.policy import cmd_test, load_policy_files
from lockgate.scaffold import write_init
from lockgate.tlsgen import write_dev_tls


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def written(tmp_path: Path) -> dict[str, Path]:
    return write_init(tmp_path / "gw")


def test_output_validates(written: dict[str, Path]) -> None:
    cfg = load_config(written["config"])
    assert [d.name for d in cfg.deployments] == ["prod"]
    assert cfg.resource_for_conn_id("orders_api").name == "orders-api"
    assert cfg.credential("orders-api-key") is not None
    assert cfg.listeners.control.scheme == "https" and cfg.listeners.http.scheme == "https"
    assert cfg.listeners.control.tls.cert == written["tls_cert"]
    assert cfg.listeners.control.tls.key == written["tls_key"]
    assert cfg.policy_files() == [written["policy"]]
    assert cfg.data_dir == written["config"].parent / "data"


def test_ports_upstream_and_no_tls(tmp_path: Path) -> None:
    out = write_init(
        tmp_path, tls=False, control_port=0, http_port=0, upstream="http://127.0.0.1:1"
    )
    cfg = load_config(out["config"])
    assert cfg.listeners.control.tls is None and cfg.listeners.http.scheme == "http"
    assert cfg.listeners.control.port == 0
    assert cfg.resource("orders-api").upstream == "http://127.0.0.1:1"
    assert "tls_ca" not in out and not (tmp_path / "tls").exists()


def test_secret_files_are_private(written: dict[str, Path]) -> None:
    assert mode(written["deployment_secret"]) == 0o600
    assert mode(written["tls_key"]) == 0o600
    # public material may be read by clients
    assert mode(written["tls_ca"]) & 0o044


def test_config_holds_only_the_hash_of_the_secret(written: dict[str, Path]) -> None:
    secret = written["deployment_secret"].read_text().strip()
    assert len(secret) >= 40  # 32 random bytes, url-safe base64
    text = written["config"].read_text()
    assert secret not in text
    cfg = load_config(written["config"])
    proof = cfg.deployment("prod").proof
    assert proof.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    for p in written.values():
        if p != written["deployment_secret"]:
            assert secret not in p.read_text(errors="replace")


def test_each_init_gets_a_fresh_secret(tmp_path: Path) -> None:
    a = write_init(tmp_path / "a")["deployment_secret"].read_text()
    b = write_init(tmp_path / "b")["deployment_secret"].read_text()
    assert a != b


def test_refuses_to_overwrite_without_force(written: dict[str, Path]) -> None:
    directory = written["config"].parent
    before = written["config"].read_text()
    secret_before = written["deployment_secret"].read_text()
    with pytest.raises(FileExistsError, match="--force"):
        write_init(directory)
    assert written["config"].read_text() == before
    assert written["deployment_secret"].read_text() == secret_before  # not replaced either
    again = write_init(directory, force=True)
    assert again["deployment_secret"].read_text() != secret_before
    assert load_config(again["config"]).deployment("prod") is not None


def test_scaffold_policy_tests_pass(written: dict[str, Path]) -> None:
    cfg = load_config(written["config"])
    ps = load_policy_files(cfg.policy_files(), {r.name for r in cfg.resources})
    code, text = cmd_test(ps, written["policy_tests"])
    assert code == 0, text
    assert "3 passed, 0 failed" in text


# -- TLS ------------------------------------------------------------------------------------
def test_server_cert_verifies_against_the_ca(written: dict[str, Path]) -> None:
    ca = x509.load_pem_x509_certificate(written["tls_ca"].read_bytes())
    chain = x509.load_pem_x509_certificates(written["tls_cert"].read_bytes())
    leaf = chain[0]
    assert chain[1] == ca  # the chain file carries the CA after the leaf
    verifier = (
        x509.verification.PolicyBuilder()
        .store(x509.verification.Store([ca]))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    built = verifier.verify(leaf, [])
    assert built[-1] == ca
    ip_verifier = (
        x509.verification.PolicyBuilder()
        .store(x509.verification.Store([ca]))
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    ip_verifier.verify(leaf, [])
    bad = (
        x509.verification.PolicyBuilder()
        .store(x509.verification.Store([ca]))
        .build_server_verifier(x509.DNSName("example.com"))
    )
    with pytest.raises(x509.verification.VerificationError):
        bad.verify(leaf, [])


def test_a_foreign_ca_does_not_verify(tmp_path: Path, written: dict[str, Path]) -> None:
    other = write_dev_tls(tmp_path / "other")
    other_ca = x509.load_pem_x509_certificate(other["ca"].read_bytes())
    leaf = x509.load_pem_x509_certificates(written["tls_cert"].read_bytes())[0]
    verifier = (
        x509.verification.PolicyBuilder()
        .store(x509.verification.Store([other_ca]))
        .build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(leaf, [])


def test_key_matches_the_certificate(written: dict[str, Path]) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(written["tls_key"].read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    leaf = x509.load_pem_x509_certificates(written["tls_cert"].read_bytes())[0]
    assert leaf.public_key() == key.public_key()


async def test_tls_handshake_on_localhost(written: dict[str, Path]) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(written["tls_cert"], written["tls_key"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        client_ctx = ssl.create_default_context(cafile=str(written["tls_ca"]))
        for host in ("127.0.0.1", "localhost"):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname=host),
                5,
            )
            assert await reader.readline() == b"hello\n"
            writer.close()
        # A client that trusts only the system store refuses the dev certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1",
                    port,
                    ssl=ssl.create_default_context(),
                    server_hostname="localhost",
                ),
                5,
            )
    finally:
        server.close()
        await server.wait_closed()


async def _handshake(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 5
    )
    try:
        return await reader.readline()
    finally:
        writer.close()


async def _serve_tls(cert: Path, key: Path) -> asyncio.Server:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)


async def test_worker_bundle_adds_the_gateway_to_the_system_trust(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import certifi

    # A local CA stands in for the system store (what certifi.where() names).
    system = write_dev_tls(tmp_path / "system")
    monkeypatch.setattr(certifi, "where", lambda: str(system["ca"]))
    out = write_init(tmp_path / "gw")
    bundle = out["worker_bundle"]
    assert bundle == tmp_path / "gw" / "tls" / "worker-bundle.pem"
    text = bundle.read_text(encoding="utf-8")
    for part in (system["ca"], out["tls_ca"], out["proxy_ca_cert"]):
        assert part.read_text(encoding="utf-8").strip() in text
    assert len(x509.load_pem_x509_certificates(bundle.read_bytes())) == 3

    client = ssl.create_default_context(cafile=str(bundle))
    foreign = write_dev_tls(tmp_path / "foreign")
    servers = [
        await _serve_tls(system["cert"], system["key"]),  # a host the system trusts
        await _serve_tls(out["tls_cert"], out["tls_key"]),  # the gateway
        await _serve_tls(foreign["cert"], foreign["key"]),  # neither
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    try:
        assert await _handshake(ports[0], client) == b"hello\n"
        assert await _handshake(ports[1], client) == b"hello\n"
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(ports[2], client)
        # The gateway's CA alone (what the docs used to say) loses the system's hosts.
        with pytest.raises(ssl.SSLCertVerificationError):
            await _handshake(ports[0], ssl.create_default_context(cafile=str(out["tls_ca"])))
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


def test_no_bundle_without_tls(tmp_path: Path) -> None:
    assert "worker_bundle" not in write_init(tmp_path, tls=False)


# -- the secretless form ------------------------------------------------------------------------


def _live_kwargs(cfg_text: str) -> list[dict[str, str]]:
    import json

    prefix = "secrets_backend_kwargs = "
    return [json.loads(line[len(prefix) :]) for line in cfg_text.splitlines()
            if line.startswith(prefix)]  # fmt: skip


def test_the_secretless_form_is_offered_first(written: dict[str, Path]) -> None:
    text = written["config"].read_text()
    assert text.index("# oidc_issuers:") < text.index("\ndeployments:")
    # uncommented as it stands, the entry validates and names prod
    lines = text.splitlines()
    start = lines.index("# oidc_issuers:")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    live = written["config"].parent / "live.yaml"
    live.write_text(text.replace("\n".join(lines[start : start + len(block)]), "\n".join(block)))
    entry = load_config(live).oidc_issuers[0]
    assert entry.deployment == "prod" and entry.claims["kubernetes.io.namespace"] == "airflow"
    workers = written["airflow_workers"].read_text()
    assert workers.index("identity_token_file") < workers.index("client_secret_file")
    # what works as written is the client secret (the issuer is not filled in yet)
    [kwargs] = _live_kwargs(workers)
    assert kwargs["client_secret_file"] == str(written["deployment_secret"])
    assert kwargs["ca_file"] == str(written["tls_ca"])


async def test_init_for_a_cluster_issuer_writes_no_secret(tmp_path: Path) -> None:
    import aiohttp

    from lockgate.demo.standins.kubernetes import FakeClusterIssuer, start
    from lockgate.identity.oidc import OidcVerifier

    cluster = FakeClusterIssuer()
    runner = await start(cluster)
    try:
        out = write_init(tmp_path, tls=False, issuer=cluster.issuer, audience="lockgate-dev")
        assert "deployment_secret" not in out and not list(tmp_path.glob("*.secret"))
        cfg = load_config(out["config"])
        assert cfg.deployment("prod").proof is None
        [kwargs] = _live_kwargs(out["airflow_workers"].read_text())
        assert kwargs["identity_token_file"] == "/var/run/secrets/lockgate/token"
        assert "client_secret_file" not in kwargs
        async with aiohttp.ClientSession() as http:

            async def session() -> aiohttp.ClientSession:
                return http

            verifier = OidcVerifier(cfg.oidc_issuers, session)
            token = cluster.token(
                namespace="airflow", service_account="airflow-worker", audience="lockgate-dev"
            )
            assert (await verifier.verify(token)).deployment == "prod"
    finally:
        await runner.cleanup()
