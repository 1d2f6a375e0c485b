"""An Azure Cosmos DB account (NoSQL REST API), written from the public REST docs.

A stand-in for demos and tests, written from the public API docs: not the service.

It checks the real auth scheme (master-key HMAC over verb, resource type, resource link and
``x-ms-date``, with a 15-minute skew window; AAD bearer tokens through an injected verifier
or, with ``AadTrust`` / ``fake.trust_entra(entra)``, as the service checks them: the Entra
key set, issuer and audience, data-plane RBAC role assignments (Data Reader / Data
Contributor) and ``disable_local_auth``),
serves account discovery, databases, containers, documents, simple queries, query plans,
patch, transactional batches and partition key ranges, and can throttle (429 +
``x-ms-retry-after-ms``) and rotate keys on demand.

Start it with ``await start_cosmos()`` in a test's loop, or ``with running_cosmos() as fake``
(own loop in a thread) for the synchronous SDK and Airflow hooks. ``fake.executed`` logs what
the account ran (see :mod:`.operations`), ``fake.requests`` what it was sent.
"""

from .operations import Executed
from .server import (
    DATA_CONTRIBUTOR,
    DATA_READER,
    CosmosFake,
    RequestRecord,
    new_key,
    running_cosmos,
    start_cosmos,
)
from .store import CosmosError

__all__ = [
    "DATA_CONTRIBUTOR",
    "DATA_READER",
    "CosmosError",
    "CosmosFake",
    "Executed",
    "RequestRecord",
    "new_key",
    "running_cosmos",
    "start_cosmos",
]
