"""A Kubernetes service-account token issuer (see :mod:`.issuer`).

A stand-in for demos and tests, written from the Kubernetes docs (service account token
volume projection, service account issuer discovery): not a cluster.
"""

from lockgate.demo.standins.kubernetes.issuer import FakeClusterIssuer, start

__all__ = ["FakeClusterIssuer", "start"]
