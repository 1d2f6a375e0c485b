"""Per-resource profiles: upstream-specific knowledge the generic HTTP exchange lacks.

A resource with ``profile: <name>`` plugs a :class:`Profile` into the one HTTP exchange
(:mod:`lockgate.gateway.http.exchange`). The exchange keeps the safety rules (normalised
path, deny by default, every refusal audited, the admitted record durable before any
upstream byte, retries, size caps, framing checks); a profile only answers the hooks below.
:class:`ProfileBase` gives each its generic default.

* ``local_answer`` — answer without a token or the upstream (discovery probes);
* ``authenticate`` — where the request carries its Lockgate token (default: the
  ``Authorization`` header; Cosmos DB: a ``/_t/<token>/`` path prefix) and the target the
  rest of the exchange sees;
* ``verify_request`` — a check that needs the verified claims (Cosmos DB: the request's
  master-key signature made with the task key);
* ``wants_body`` — the complete request body is read first (bounded by ``max_body``;
  over the bound the gateway answers 413) so that classification can see it;
* ``authorize`` — classify with path, query and body into (action, object), ask policy
  through the ``decide`` callback (possibly for more than one object), apply the
  profile's own checks (guardrails, ownership), and return a :class:`Verdict`;
* ``sign_upstream`` — the credential header lines of one upstream attempt (Cosmos DB: a
  signature over verb, resource and a fresh ``x-ms-date``); default: the resource's header;
* ``error_body`` — the upstream's error shape around the gateway's own answers, so the
  client's SDK shows the reason;
* ``rewrite_response`` — change a small, fully buffered response (``Verdict.rewrite``);
* ``on_response`` — see the allowed request's response (headers; the body when
  ``Verdict.capture``) and return audit detail; state such as started run ids is kept here;
* ``throttle_headers`` — the headers of the gateway's 429 when a quota throttles (default
  ``Retry-After``; Cosmos DB adds ``x-ms-retry-after-ms`` and ``x-ms-substatus``), its body
  shaped by ``error_body``; ``Verdict.starts_run`` makes the request ask the ``runs`` cap
  (the run id comes from ``on_response``'s ``run_id``);
* ``finished_run`` — the run id a relayed answer shows finished (its ``runs`` slot is freed).

Profiles import only these types (:mod:`.hooks`), never the proxy nor this package.
Requests of profiled resources take the task path (no callback fast path): a profile may
need an upstream lookup before deciding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lockgate.gateway.http.profiles.hooks import (
    Decide,
    Headers,
    Presented,
    Profile,
    ProfileBase,
    ProfileRequest,
    UpstreamCall,
    UpstreamHeaders,
    Verdict,
)

if TYPE_CHECKING:
    from lockgate.config import HttpResource
    from lockgate.gateway.http.upstream import UpstreamTarget
    from lockgate.store import Database

#: the state database of a name (``State.database``): ``"databricks_runs"``, ``"adf_runs"``
DatabaseFor = Callable[[str], "Database"]


def make_profile(
    resource: HttpResource,
    target: UpstreamTarget,
    data_dir: Path | None,
    database_for: DatabaseFor | None = None,
    master_key: bytes | None = None,
) -> Profile | None:
    """The profile object for ``resource`` (None without ``profile:``). Run registries live
    in the state's database when ``database_for`` is given (shared by every replica on
    PostgreSQL), else in SQLite files under ``data_dir`` (``None``: in memory). Cosmos task
    keys derive from ``master_key`` when given: the state's key, the one the control plane
    derives them from too (else the key is looked up from ``data_dir``)."""
    name = getattr(resource, "profile", None)
    if name is None:
        return None

    def store(db_name: str) -> Path | Database | None:
        if database_for is not None:
            return database_for(db_name)
        return data_dir / f"{db_name}.db" if data_dir else None

    if name == "databricks":
        from lockgate.gateway.http.profiles.databricks import DatabricksProfile, RunRegistry

        return DatabricksProfile(resource, target, RunRegistry(store("databricks_runs")))
    if name == "cosmos":
        from lockgate.credentials.cosmos import task_key_secret
        from lockgate.gateway.http.profiles.cosmos import CosmosProfile

        if master_key is not None:
            return CosmosProfile(resource, task_key_secret(master_key, resource.name))
        return CosmosProfile.for_resource(resource, target, data_dir)
    if name == "arm":
        from lockgate.gateway.http.profiles.arm import AdfRuns, ArmProfile

        return ArmProfile(resource, AdfRuns(store("adf_runs")))
    raise ValueError(f"resource {resource.name}: unknown profile {name!r}")


__all__ = [
    "DatabaseFor",
    "Decide",
    "Headers",
    "Presented",
    "Profile",
    "ProfileBase",
    "ProfileRequest",
    "UpstreamCall",
    "UpstreamHeaders",
    "Verdict",
    "make_profile",
]
