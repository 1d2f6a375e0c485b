"""A SPIFFE Workload API for tests: what a SPIRE agent serves a workload on its socket.

Written from the SPIFFE Workload API spec (``workload.proto``), served with the
``spiffe`` package's generated servicer over a unix socket in a temporary directory:

- every call must carry the ``workload.spiffe.io: true`` metadata, as the real agent
  requires (without it: ``InvalidArgument``, "security header missing from request");
- ``FetchJWTSVID`` answers a JWT-SVID for the workload's SPIFFE ID (``sub``) and the
  requested audiences (``aud``; none: ``InvalidArgument``), signed with the trust domain's
  JWT authority (ES256, SPIRE's default; header ``alg``, ``kid``, ``typ: JWT``) and no
  ``iss`` (SPIRE sets none unless configured);
- ``FetchJWTBundles`` streams the trust domain's JWT bundle: a JWKS whose keys say
  ``use: jwt-svid`` (the SPIFFE bundle format), which is also what :meth:`bundle` writes
  to a file for Lockgate's ``jwks_file``.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from spiffe._proto import workload_pb2, workload_pb2_grpc

SECURITY_HEADER = ("workload.spiffe.io", "true")


class FakeWorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    """A SPIRE agent's Workload API for one workload (``spiffe_id``) of ``trust_domain``.
    ``socket`` is the unix socket path once :meth:`start` ran; ``calls`` counts what was
    asked."""

    def __init__(
        self, trust_domain: str = "example.org", workload: str = "/ns/airflow/sa/worker"
    ) -> None:
        self.trust_domain = trust_domain
        self.spiffe_id = f"spiffe://{trust_domain}{workload}"
        self.ttl = 300
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex
        self.calls: list[str] = []
        self._dir = tempfile.TemporaryDirectory(prefix="spire-agent-")
        self.socket = str(Path(self._dir.name) / "agent.sock")
        self._server: grpc.Server | None = None

    # -- the agent's answers ------------------------------------------------------------------
    def _refuse_without_header(self, context: grpc.ServicerContext) -> None:
        if SECURITY_HEADER not in tuple(context.invocation_metadata()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    def FetchJWTSVID(  # the generated servicer's name
        self, request: workload_pb2.JWTSVIDRequest, context: grpc.ServicerContext
    ) -> workload_pb2.JWTSVIDResponse:
        self._refuse_without_header(context)
        self.calls.append("FetchJWTSVID")
        if not request.audience:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if request.spiffe_id and request.spiffe_id != self.spiffe_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        svid = self.svid(list(request.audience))
        return workload_pb2.JWTSVIDResponse(
            svids=[workload_pb2.JWTSVID(spiffe_id=self.spiffe_id, svid=svid)]
        )

    def FetchJWTBundles(  # the generated servicer's name
        self, request: workload_pb2.JWTBundlesRequest, context: grpc.ServicerContext
    ) -> Iterator[workload_pb2.JWTBundlesResponse]:
        self._refuse_without_header(context)
        self.calls.append("FetchJWTBundles")
        bundle = json.dumps(self.jwks()).encode()
        yield workload_pb2.JWTBundlesResponse(bundles={self.trust_domain: bundle})

    # -- what the tests use -------------------------------------------------------------------
    def svid(self, audience: list[str], **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": self.spiffe_id, "aud": audience, "iat": now,
                                  "exp": now + self.ttl, **overrides}  # fmt: skip
        return jwt.encode(claims, self._key, algorithm="ES256",
                          headers={"kid": self.kid, "typ": "JWT"})  # fmt: skip

    def jwks(self) -> dict[str, Any]:
        public = jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**public, "kid": self.kid, "use": "jwt-svid"}],
                "spiffe_sequence": 1, "spiffe_refresh_hint": 300}  # fmt: skip

    def bundle(self, path: Path) -> Path:
        """Write the trust bundle (SPIFFE bundle format) to ``path``, as an operator copies
        ``spire-server bundle show -format spiffe`` out."""
        path.write_text(json.dumps(self.jwks()))
        return path

    def rotate_key(self) -> None:
        """The JWT authority rotated: a new key signs (and only it is in the bundle)."""
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = uuid.uuid4().hex

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        """Serve on the unix socket; returns its ``unix://`` address."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, server)
        server.add_insecure_port("unix://" + self.socket)
        server.start()
        self._server = server
        return "unix://" + self.socket

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None
        self._dir.cleanup()
