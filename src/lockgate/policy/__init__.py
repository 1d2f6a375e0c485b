"""Policy: who may do what to which resource, as YAML files in git. Deny by default.

One file per team; every file holds a ``rules`` list::

    rules:
      - id: finance-read-orders          # unique across all files
        effect: allow                    # allow | deny (an explicit deny beats any allow)
        principals: ["airflow:prod/finance_*/*"]   # globs on "airflow:<deployment>/<dag>/<task>"
        actions: [read]                  # read | write | admin | run | "*"
        resources: ["orders-api"]        # globs on resource names from lockgate.yaml
        objects: ["/orders/**"]          # globs on the object; default ["*"] (anything)
        conditions:                      # optional; all must hold
          max_token_ttl: 900             # seconds or "15m"; also caps token lifetime at mint
          time_window: {start: "06:00", end: "20:00"}   # UTC, [start, end), may wrap midnight
          map_index: [0, 1, "10-19"]     # instances of a mapped task (token claim map_index)
          mapped: true                   # true: mapped instances; false: unmapped tasks
        description: "Finance DAGs read orders"

A file whose top level says ``mode: shadow`` is watched, never enforced: its verdicts are
audited next to the enforced ones (``PolicyStore.shadow``; ``docs/policy.md``).

Unknown fields are errors; times must be quoted (YAML reads ``06:00`` as a number).
A file may also hold a ``quotas:`` list (rates and caps per DAG, see
:mod:`lockgate.quotas` and ``docs/quotas.md``), compiled into ``PolicySet.quotas``.

Globs are case-sensitive and anchored. Principals and resources use plain ``fnmatchcase``
(``*`` also matches ``/``). Objects are path-aware: ``*`` stays within one ``/`` segment,
``**`` crosses segments, and a lone ``*`` or ``**`` matches every object.

Decision: among rules naming the request's action and matching principal, resource and
object, a deny whose conditions hold wins; else the first allow whose conditions hold; else
deny ("no rule allows ..." or "rule X matched but its condition ... does not hold"). Deny
conditions say *when* the deny applies. Missing inputs fail closed.

Doors: :func:`load_policy_files` -> :class:`PolicySet` (``decide``, ``mint_check``,
``max_ttl``); :class:`PolicyStore` for hot reload; :func:`lint`; :func:`run_policy_tests`;
``cmd_check`` / ``cmd_lint`` / ``cmd_test`` for the CLI. Full guide: ``docs/policy.md``.
"""

from lockgate.policy.cli import cmd_check, cmd_lint, cmd_test, split_target
from lockgate.policy.engine import Decision, PolicySet, Request, Rule
from lockgate.policy.lint import Finding, lint, policy_problems
from lockgate.policy.loader import (
    LoadedPolicy,
    load_policy_files,
    load_policy_texts,
    parse_policies,
    parse_policy_texts,
)
from lockgate.policy.model import ACTIONS
from lockgate.policy.store import PolicyStore
from lockgate.policy.testrunner import TestResult, run_policy_tests

__all__ = [
    "ACTIONS",
    "Decision",
    "Finding",
    "LoadedPolicy",
    "PolicySet",
    "PolicyStore",
    "Request",
    "Rule",
    "TestResult",
    "cmd_check",
    "cmd_lint",
    "cmd_test",
    "lint",
    "load_policy_files",
    "load_policy_texts",
    "parse_policies",
    "parse_policy_texts",
    "policy_problems",
    "run_policy_tests",
    "split_target",
]
