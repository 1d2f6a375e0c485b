"""What the federation tests against the test clouds share: Lockgate as an OIDC issuer the
clouds can reach (its control listener over HTTPS on a port known before it starts, so the
issuer URL in its config, its discovery document and the clouds' trust all agree)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockgate.demo.stack import free_port
from lockgate.tlsgen import write_dev_tls


@dataclass(frozen=True)
class LockgateIssuer:
    url: str  # config.issuer_url: what the clouds' federated credentials and policies name
    ca: Path  # the CA the clouds check the control listener's certificate with
    control: dict[str, Any]  # the listeners.control section


def lockgate_issuer(directory: Path) -> LockgateIssuer:
    tls = write_dev_tls(directory, ["127.0.0.1", "localhost"])
    port = free_port()
    control = {"port": port, "tls": {"cert": str(tls["cert"]), "key": str(tls["key"])}}
    return LockgateIssuer(f"https://127.0.0.1:{port}", tls["ca"], control)
