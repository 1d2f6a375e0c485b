"""Databricks OAuth token federation: an identity provider's JWT exchanged for a Databricks
OAuth token at ``/oidc/v1/token`` (RFC 8693), under federation policies.

Written from the public docs ("Configure a federation policy", "Use an identity provider
token to authenticate", the account federation-policy REST reference):

- a **service principal federation policy** (workload identity federation) belongs to one
  service principal: ``issuer``, ``audiences``, ``subject`` (matched against
  ``subject_claim``, default ``sub``); the exchange names the principal with ``client_id``;
- an **account federation policy** serves every user and service principal of the account:
  the token's ``subject_claim`` names who it is (a user name or a service principal's
  application id), and the exchange sends no ``client_id``;
- the issuer is an https URL; a service principal holds at most 20 federation policies; an
  account federation policy names no ``subject`` (its ``subject_claim`` maps the token to a
  user or service principal), a service principal's always does;
- ``audiences`` defaults to the account id; a token matches when any of its ``aud`` values is
  in the policy's list;
- tokens must be signed RS256 or ES256 (EdDSA, HS*, ``none`` refused), with the issuer's
  keys from its discovery document over https (or the policy's ``jwks_uri``, or the key set
  given inline as ``jwks_json``).

A refusal is ``invalid_request`` (RFC 8693 §2.2.2). The subject token is never recorded.

Part of a stand-in for demos and tests, written from the public docs: not the service.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import jwt

from lockgate.demo.standins.entra.issuer_keys import (
    IssuerKeyError,
    IssuerKeys,
    UnknownKeyId,
    verify_signature,
)

__all__ = ["JWT_TOKEN_TYPE", "TOKEN_EXCHANGE", "FederationPolicies", "FederationPolicy", "Refused"]

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a URN
ALGORITHMS = ("RS256", "ES256")
MAX_POLICIES_PER_PRINCIPAL = 20


@dataclass(frozen=True)
class FederationPolicy:
    policy_id: str
    issuer: str
    audiences: tuple[str, ...]
    subject: str | None
    subject_claim: str
    service_principal: str | None  # application id; None: account-wide
    jwks_uri: str | None = None
    jwks_json: str | None = None  # the issuer's key set inline (no fetch at all)


class Refused(Exception):
    """An exchange refused; ``str()`` is the error_description."""


def _refuse(why: str) -> NoReturn:
    raise Refused(why)


class FederationPolicies:
    """The account's federation policies, and the exchange checked against them."""

    def __init__(self, account_id: str, keys: IssuerKeys, *, leeway: int = 60) -> None:
        self.account_id = account_id
        self.keys = keys
        self.leeway = leeway
        self.policies: dict[str, FederationPolicy] = {}
        self._ids = itertools.count(1)

    def add(
        self,
        *,
        issuer: str,
        audiences: list[str] | tuple[str, ...] | None = None,
        subject: str | None = None,
        subject_claim: str = "sub",
        service_principal: str | None = None,
        jwks_uri: str | None = None,
        jwks_json: str | None = None,
    ) -> FederationPolicy:
        if not issuer.startswith("https://"):
            raise ValueError("a federation policy's issuer is an https URL")
        if service_principal is None and subject is not None:
            raise ValueError("an account federation policy names no subject (subject_claim maps)")
        if service_principal is not None and not subject:
            raise ValueError("a service principal federation policy names its subject")
        held = [p for p in self.policies.values() if p.service_principal == service_principal]
        if service_principal is not None and len(held) >= MAX_POLICIES_PER_PRINCIPAL:
            raise ValueError(
                f"a service principal holds at most {MAX_POLICIES_PER_PRINCIPAL} federation "
                "policies"
            )
        if audiences is not None and (not audiences or not all(audiences)):
            raise ValueError("a policy's audiences are non-empty strings")
        if jwks_uri and jwks_json:
            raise ValueError("a policy names its keys by jwks_uri or jwks_json, not both")
        if jwks_json is not None:
            _inline_keys(jwks_json)  # refused when it is no key set
        policy = FederationPolicy(
            f"policy-{next(self._ids)}", issuer, tuple(audiences or (self.account_id,)),
            subject, subject_claim, service_principal, jwks_uri, jwks_json,
        )  # fmt: skip
        self.policies[policy.policy_id] = policy
        return policy

    def remove(self, policy_id: str) -> None:
        del self.policies[policy_id]

    async def exchange(
        self, form: Any, principals: set[str], now: float | None = None
    ) -> tuple[str, dict[str, Any]]:
        """(the Databricks principal, the token's claims) for a valid exchange; Refused else."""
        if form.get("subject_token_type") != JWT_TOKEN_TYPE:
            _refuse(f"subject_token_type must be {JWT_TOKEN_TYPE}")
        if form.get("scope", "all-apis") != "all-apis":
            _refuse("scope must be all-apis")
        token = str(form.get("subject_token", ""))
        try:
            header = jwt.get_unverified_header(token)
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            _refuse("the subject token is not a valid JWT")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            _refuse(f"the subject token must be signed using RS256 or ES256, not {alg}")
        client_id = form.get("client_id")
        policy, principal = self._match(claims, str(client_id) if client_id else None, principals)
        kid = header.get("kid")
        try:
            if policy.jwks_json:
                jwk = _inline_key(policy.jwks_json, kid)
            elif policy.jwks_uri:
                jwk = await self.keys.key_at(policy.jwks_uri, kid)
            else:
                jwk = await self.keys.key(policy.issuer, kid)
            verify_signature(token, jwk, str(alg))
        except (jwt.PyJWTError, UnknownKeyId):
            _refuse("the subject token's signature is not valid")
        except IssuerKeyError:
            _refuse("the issuer's public keys could not be fetched")
        self._check_times(claims, time.time() if now is None else now)
        return principal, claims

    def _match(
        self, claims: dict[str, Any], client_id: str | None, principals: set[str]
    ) -> tuple[FederationPolicy, str]:
        if client_id is not None and client_id not in principals:
            _refuse(f"service principal {client_id} does not exist in the account")
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        for policy in self.policies.values():
            if policy.service_principal != client_id or policy.issuer != claims.get("iss"):
                continue
            if not auds & set(policy.audiences):
                continue
            subject = claims.get(policy.subject_claim)
            if not isinstance(subject, str) or policy.subject not in (None, subject):
                continue
            principal = client_id or subject
            if principal in principals:
                return policy, principal
        _refuse("no federation policy matches the subject token")

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float):
            _refuse("the subject token has no exp")
        if now > exp + self.leeway:
            _refuse("the subject token has expired")
        if isinstance(nbf, int | float) and now + self.leeway < nbf:
            _refuse("the subject token is not valid yet")


def _inline_keys(jwks_json: str) -> list[dict[str, Any]]:
    try:
        keys = json.loads(jwks_json).get("keys")
    except (ValueError, AttributeError):
        keys = None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ValueError('jwks_json is a JSON Web Key Set ({"keys": [...]})')
    return keys


def _inline_key(jwks_json: str, kid: str | None) -> dict[str, Any]:
    """The key ``kid`` of an inline set (no ``kid``: its only key); UnknownKeyId else."""
    keys = _inline_keys(jwks_json)
    found = [k for k in keys if k.get("kid") == kid] if kid is not None else keys
    if len(found) != 1:
        raise UnknownKeyId(f"no key {kid!r} in the policy's jwks_json")
    return found[0]
