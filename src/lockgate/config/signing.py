"""``signing:``: which algorithms Lockgate signs with, and which audience gets which.

Lockgate's own tokens (audience: a resource name) are EdDSA unless mapped otherwise. Clouds
that trust Lockgate as an OIDC issuer accept only some algorithms: Entra ID workload identity
federation RS256, Databricks token federation RS256 or ES256. ``audiences`` maps an audience
(exact, or a glob such as ``https://*.azuredatabricks.net/*``) to the algorithm that signs
tokens for it; a key of every algorithm in use is kept, rotated and published in the JWKS.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field, model_validator

from lockgate.config._base import Section

SigningAlgorithm = Literal["EdDSA", "RS256", "ES256"]
#: The algorithm of Lockgate's own tokens and of anything no mapping names.
DEFAULT_ALGORITHM: SigningAlgorithm = "EdDSA"


class SigningSettings(Section):
    algorithms: list[SigningAlgorithm] = Field(
        default=["EdDSA"],
        min_length=1,
        description="algorithms a signing key is kept for (more are added when an audience "
        "mapping or a federated credential needs them)",
    )
    audiences: dict[str, SigningAlgorithm] = Field(
        default={}, description="audience (or glob) -> algorithm of the tokens signed for it"
    )
    rsa_key_size: Literal[2048, 3072, 4096] = 2048
    publish_ahead: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="seconds a rotated RS256/ES256 key is published before it signs, so "
        "clouds that cache Lockgate's JWKS know it first",
    )

    @model_validator(mode="after")
    def _eddsa_kept(self) -> SigningSettings:
        if "EdDSA" not in self.algorithms:
            # Lockgate's own tokens and the verifier's fast path are EdDSA.
            raise ValueError("signing.algorithms: must include 'EdDSA' (Lockgate's own tokens)")
        return self

    def algorithm_for(
        self, audience: str, default: SigningAlgorithm = DEFAULT_ALGORITHM
    ) -> SigningAlgorithm:
        """The algorithm for tokens whose ``aud`` is ``audience``: an exact mapping first,
        then the first glob that matches, else ``default``."""
        exact = self.audiences.get(audience)
        if exact is not None:
            return exact
        for pattern, alg in self.audiences.items():
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(audience, pattern):
                return alg
        return default
