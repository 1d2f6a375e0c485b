"""The web console: what people look at instead of the CLI, served at ``/console`` on the
control listener.

Audit explorer (filters, a run's timeline, the chain's status, CSV/JSON export), access map
(what a DAG or principal may reach and by which rule; who can reach a resource; the deciding
rule of any request typed in), live tokens and sessions with revoke and block, credentials
(versions, age, rotation, never a value), requests and denials per DAG over time, and least
privilege from observed use (``policy suggest``/``unused``, shadow verdicts).

- :mod:`.web`       what every page shares: the signed-in user, roles, rendering,
  CSRF-checked actions, :class:`ConsoleContext` (the collaborators)
- :mod:`.app`       the sub-app (``console_app``, ``mount``) and its list of views
- :mod:`.auth`      sign-in routes, the session check, the security headers (CSP ...);
  :mod:`.auth_limits` bounds how many failed sign-ins per address are audited one by one
- :mod:`.oidc`      OIDC authorization code + PKCE client, ID token checks
- :mod:`.sessions`  store domain ``console``: sessions, pending sign-ins, links (digests only)
- :mod:`.reads`     the one bounded pool every trail read runs on (its own threads; 503 past it)
- :mod:`.links`     one-time admin links (``lockgate serve`` prints one, ``lockgate console
  link`` makes another)
- views, one module each: :mod:`.views_overview` (home, charts drawn by :mod:`.charts`),
  :mod:`.views_audit` (explorer, record, chain status; :mod:`.views_audit_timeline` a run's
  timeline, :mod:`.views_audit_export` CSV/JSON lines), :mod:`.views_access`,
  :mod:`.views_live` (with :mod:`.live`: live tokens and the operator records),
  :mod:`.views_credentials`, :mod:`.views_policy`
"""

from lockgate.console.app import console_app, mount
from lockgate.console.links import console_link_url, issue_link
from lockgate.console.web import ConsoleContext, ConsoleUser, LiveSessions, OpenSession

__all__ = [
    "ConsoleContext",
    "ConsoleUser",
    "LiveSessions",
    "OpenSession",
    "console_app",
    "console_link_url",
    "issue_link",
    "mount",
]
