"""``profile: arm``: Azure Resource Manager (Data Factory pipelines) as policy objects.

* :mod:`.profile` — classification of the Data Factory REST API and the verdict (poll
  tokens of a deferred operator's trigger included);
* :mod:`.runs` — pipeline runs started through the gateway, and by which DAG run.
"""

from lockgate.gateway.http.profiles.arm.profile import ArmProfile, poll_refusal
from lockgate.gateway.http.profiles.arm.runs import AdfRun, AdfRuns

__all__ = ["AdfRun", "AdfRuns", "ArmProfile", "poll_refusal"]
