"""The web console: what people look at instead of the CLI, served at ``/console`` on the
control listener.

Audit explorer (filters, a run's timeline, the chain's status, CSV/JSON export), access map
(what a DAG or principal may reach and by which rule; who can reach a resource; the deciding
rule of any request typed in), live tokens and sessions with revoke and block, credentials
(versions, age, rotation, never a value), requests and denials per DAG over time, and least
privilege from observed use (``policy suggest``/``unused``, shadow verdicts).

- :mod:`.web`  what every page shares: the signed-in user, roles, rendering, CSRF-checked
  actions, :class:`ConsoleContext` (the collaborators)
"""

from lockgate.console.web import ConsoleContext, ConsoleUser, LiveSessions, OpenSession

__all__ = ["ConsoleContext", "ConsoleUser", "LiveSessions", "OpenSession"]
