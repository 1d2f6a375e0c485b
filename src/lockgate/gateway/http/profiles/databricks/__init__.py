"""``profile: databricks``: jobs and runs as policy objects, run ownership, cluster guardrails.

* :mod:`.profile` — classification of the Jobs/Clusters REST API and the verdict;
* :mod:`.registry` — runs started through the gateway (who may read or cancel them);
* :mod:`.guardrails` — cluster-cost limits on the specs a request would start.
"""

from lockgate.gateway.http.profiles.databricks.profile import (
    ANY_RUN,
    DEPLOYMENT_WIDE,
    POLL_TASK,
    DatabricksProfile,
)
from lockgate.gateway.http.profiles.databricks.registry import RunRecord, RunRegistry

__all__ = [
    "ANY_RUN",
    "DEPLOYMENT_WIDE",
    "POLL_TASK",
    "DatabricksProfile",
    "RunRecord",
    "RunRegistry",
]
