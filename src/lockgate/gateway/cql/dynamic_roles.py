"""The dynamic roles of every ``dynamic_roles: true`` resource, as one set: kind-neutral, in
:mod:`lockgate.gateway.dynamic_roles` (this name stays for the code that imports it from
here); the Cassandra half is :mod:`lockgate.gateway.cql.roles`.
"""

from __future__ import annotations

from lockgate.gateway.dynamic_roles import DbRoles, PasswordFor, upstream_password

__all__ = ["DbRoles", "PasswordFor", "upstream_password"]
