"""``profile: arm``: Azure Resource Manager (Data Factory pipelines) as policy objects."""

from lockgate.gateway.http.profiles.arm.profile import AdfRuns, ArmProfile

__all__ = ["AdfRuns", "ArmProfile"]
