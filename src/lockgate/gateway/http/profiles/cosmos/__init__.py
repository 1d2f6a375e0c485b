"""``profile: cosmos``: Azure Cosmos DB for NoSQL (REST) through the one HTTP exchange.

* :mod:`.profile` — the hooks: token in the path, request signature, re-signing upstream;
* :mod:`.classify` — (verb, path, headers, body) → (action, object), failing closed;
* :mod:`.answers` — Cosmos-shaped errors and the account discovery rewrite.
"""

from lockgate.gateway.http.profiles.cosmos.classify import ACCOUNT, Operation, Refused, classify
from lockgate.gateway.http.profiles.cosmos.profile import TOKEN_SEGMENT, CosmosProfile

__all__ = ["ACCOUNT", "TOKEN_SEGMENT", "CosmosProfile", "Operation", "Refused", "classify"]
