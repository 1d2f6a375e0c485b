"""Policy at mint time: may this task have a token for this resource, and for how long.

Every door that mints (``/v1/token``, ``/v1/db-role``, ``/v1/poll-token``) asks the same
:class:`MintPolicy`: the kill switch first (a blocked DAG or deployment gets nothing), then
the policy set's mint check, then the TTL capped by the config's ``tokens.max_ttl`` and any
``max_token_ttl`` condition of the rule that allows it.
"""

from __future__ import annotations

from lockgate.config import LockgateConfig
from lockgate.identity.model import MintDecision, TaskIdentity
from lockgate.identity.revocation import RevocationStore
from lockgate.policy.store import PolicyStore


class MintPolicy:
    """``policy(identity, resource, requested_ttl)`` → :class:`MintDecision`."""

    def __init__(
        self, config: LockgateConfig, policy: PolicyStore, revocations: RevocationStore
    ) -> None:
        self._tokens = config.tokens
        self._policy = policy
        self._revocations = revocations

    def __call__(
        self, identity: TaskIdentity, resource: str, requested_ttl: int | None
    ) -> MintDecision:
        # The kill switch holds for every door that mints (the token service checks it
        # first with its own refusal slug; poll tokens come straight here).
        blk = self._revocations.blocked(identity.deployment, identity.dag_id)
        if blk is not None:
            return MintDecision(False, 0, blk.message(identity.dag_id), None)
        policy_set = self._policy.current
        decision = policy_set.mint_check(identity.principal, resource, identity.map_index)
        if not decision.allowed:
            return MintDecision(False, 0, decision.explain(), decision.rule)
        tokens = self._tokens
        cap = min(
            tokens.max_ttl,
            policy_set.max_ttl(identity.principal, resource, identity.map_index) or tokens.max_ttl,
        )
        wanted = requested_ttl or tokens.default_ttl
        ttl = max(1, min(wanted, cap))
        if requested_ttl is None:
            ttl = min(ttl, tokens.default_ttl)
        return MintDecision(True, ttl, decision.explain(), decision.rule)
