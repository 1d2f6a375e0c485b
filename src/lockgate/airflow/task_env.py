"""Environment the secrets backend exports into the task process for some connections.

The Azure Data Factory hook cannot be given a token or an endpoint; it builds
``DefaultAzureCredential`` and a client for ``https://management.azure.com`` *after* it has
looked its connection up. So when the backend answers such a conn_id inside a task, it
exports (from the catalog entry's ``env``), before the hook goes on:

- ``IDENTITY_ENDPOINT`` / ``IDENTITY_HEADER`` — Lockgate's managed identity endpoint and the
  task's own Lockgate token, which ``ManagedIdentityCredential`` presents there;
- ``HTTPS_PROXY`` — Lockgate's forward proxy, through which the ARM calls go; left alone
  (with a warning) when the worker already names another proxy: then ARM calls bypass
  Lockgate and fail upstream, since a Lockgate token means nothing to ARM;
- ``NO_PROXY`` — extended (never replaced) with the gateway's control host.

Both spellings of the proxy variables are set, since ``requests`` prefers lower case.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

_PROXY = ("HTTPS_PROXY", "https_proxy")
_NO_PROXY = ("NO_PROXY", "no_proxy")
_exported: dict[str, str] = {}  # what this process set, so a later task may replace it


def export(env: dict[str, str]) -> None:
    for name, value in env.items():
        if name.upper() == "HTTPS_PROXY":
            current = next((os.environ[n] for n in _PROXY if os.environ.get(n)), None)
            if current and current != _exported.get("HTTPS_PROXY"):
                log.warning(
                    "Lockgate: HTTPS_PROXY is already set to another proxy; calls to "
                    "intercepted hosts will not pass through Lockgate"
                )
                continue
            for n in _PROXY:
                os.environ[n] = value
            _exported["HTTPS_PROXY"] = value
        elif name.upper() == "NO_PROXY":
            have = [h.strip() for h in os.environ.get("NO_PROXY", "").split(",") if h.strip()]
            have += [h.strip() for h in os.environ.get("no_proxy", "").split(",") if h.strip()]
            merged = list(dict.fromkeys(have + [h for h in value.split(",") if h]))
            for n in _NO_PROXY:
                os.environ[n] = ",".join(merged)
        else:
            os.environ[name] = value
            _exported[name] = value
