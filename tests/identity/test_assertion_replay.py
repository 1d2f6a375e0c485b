"""A private-key JWT client assertion is accepted once per data directory, not once per process.

``lockgate serve --workers N`` runs N token services on one data directory behind one port
(SO_REUSEPORT), and a restart starts a fresh process: a jti remembered in one process's
memory let a captured assertion be replayed to a sibling worker, or after a restart, for as
long as it had not expired. The oracle is a second, independent verifier on the same data
directory, in this process and in a child process.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate.config import LockgateConfig, parse_config
from lockgate.errors import AuthenticationError
from lockgate.identity import AssertionVerifier

ISSUER = "http://lockgate.test"
KEY = Ed25519PrivateKey.generate()


def _config(data_dir: Path) -> LockgateConfig:
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (data_dir / "pk.pem").write_bytes(pem)
    return parse_config(
        {
            "data_dir": str(data_dir),
            "issuer": ISSUER,
            "deployments": [
                {
                    "name": "pk",
                    "proof": {"type": "private_key_jwt", "public_key": str(data_dir / "pk.pem")},
                    "dags": ["*"],
                }
            ],
            "resources": [{"name": "orders-api", "kind": "http", "upstream": "https://o.test"}],
        }
    )


def _assertion(jti: str | None = None) -> str:
    now = int(time.time())
    claims = {
        "iss": "pk",
        "sub": "pk",
        "aud": f"{ISSUER}/v1/token",
        "exp": now + 120,
        "iat": now,
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode(claims, KEY, algorithm="EdDSA")


def _verifier(config: LockgateConfig) -> AssertionVerifier:
    # What TokenService builds in each worker: only the config is shared.
    return AssertionVerifier(config)


def test_replay_to_a_sibling_worker_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    worker_a, worker_b = _verifier(config), _verifier(config)
    first = _assertion()
    assert worker_a.verify(first) == "pk"
    with pytest.raises(AuthenticationError) as caught:
        worker_b.verify(first)
    assert caught.value.reason == "replayed"
    # A fresh jti is still welcome on either worker: the ledger refuses repeats, not users.
    assert worker_b.verify(_assertion()) == "pk"


def test_replay_to_another_process_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    used = _assertion()
    assert _verifier(config).verify(used) == "pk"
    child = (
        "import sys\n"
        "from lockgate.config import parse_config\n"
        "from lockgate.errors import AuthenticationError\n"
        "from lockgate.identity import AssertionVerifier\n"
        "import json\n"
        "config = parse_config(json.loads(sys.argv[1]))\n"
        "try:\n"
        "    AssertionVerifier(config).verify(sys.argv[2])\n"
        "    print('accepted')\n"
        "except AuthenticationError as exc:\n"
        "    print(exc.reason)\n"
    )
    raw = config.model_dump_json(include={"data_dir", "issuer", "deployments", "resources"})
    out = subprocess.run(
        [sys.executable, "-c", child, raw, used],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "replayed", out.stderr


def test_a_refused_assertion_burns_nothing(tmp_path: Path) -> None:
    """Only a verified assertion is remembered: a forged one carrying a victim's future jti
    must not lock the victim out."""
    config = _config(tmp_path)
    jti = uuid.uuid4().hex
    forged_claims = jwt.decode(_assertion(jti), options={"verify_signature": False})
    forged = jwt.encode(forged_claims, Ed25519PrivateKey.generate(), algorithm="EdDSA")
    with pytest.raises(AuthenticationError):
        _verifier(config).verify(forged)
    assert _verifier(config).verify(_assertion(jti)) == "pk"


def test_a_replaced_deployment_key_takes_effect_without_a_restart(tmp_path: Path) -> None:
    """An operator who replaces a leaked deployment key's PEM file expects the old key to stop
    working then, as policy files do; the verifier kept the first key it read for good."""
    config = _config(tmp_path)
    verifier = _verifier(config)
    assert verifier.verify(_assertion()) == "pk"
    new_key = Ed25519PrivateKey.generate()
    (tmp_path / "pk.pem").write_bytes(
        new_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(_assertion())  # signed with the leaked key
    assert caught.value.reason == "bad_signature"
    now = int(time.time())
    claims = {"iss": "pk", "sub": "pk", "aud": f"{ISSUER}/v1/token", "exp": now + 60}
    fresh = jwt.encode({**claims, "jti": uuid.uuid4().hex}, new_key, algorithm="EdDSA")
    assert verifier.verify(fresh) == "pk"
