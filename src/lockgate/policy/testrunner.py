"""Policy unit tests: a YAML file of requests and the decision each one should get.

Format::

    tests:
      - name: finance can read orders
        principal: airflow:prod/finance_daily/load
        action: read
        resource: orders-api
        object: /orders/1              # optional, default ""
        at: "2026-01-01T10:00:00Z"     # optional, UTC if no offset; default now
        token_ttl: 600                 # optional; default: the TTL a token minted now would get
        map_index: 3                   # optional; default -1 (the task is not mapped)
        expect: allow                  # allow | deny
        rule: finance-read-orders      # optional: the rule expected to decide

Without ``token_ttl`` a test simulates a token freshly minted for the principal and resource,
i.e. with :meth:`PolicySet.max_ttl` (``None`` when no matching allow caps it). Tests without
``at`` depend on the clock if a rule has a time window; give ``at`` for those.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from lockgate.errors import ConfigError
from lockgate.policy.engine import Decision, PolicySet, Request
from lockgate.policy.loader import parse_yaml, read_text
from lockgate.policy.mapindex import MAX_MAP_INDEX, NOT_MAPPED
from lockgate.policy.model import OptionalDuration, format_errors


def _utc_time(value: object) -> datetime | None:
    if value is None or isinstance(value, datetime):
        at = value
    elif isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError('expected an ISO time like "2026-01-01T10:00:00Z"') from None
    else:
        raise ValueError('expected a quoted ISO time like "2026-01-01T10:00:00Z"')
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)  # policy times are UTC
    return at


# An ISO time; one without a zone is UTC.
UtcTime = Annotated[datetime | None, BeforeValidator(_utc_time)]


class PolicyTestCase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str
    principal: str
    action: Literal["read", "write", "admin", "run"]
    resource: str
    object: str = ""
    at: UtcTime = None
    token_ttl: OptionalDuration = None
    map_index: int = Field(NOT_MAPPED, ge=NOT_MAPPED, le=MAX_MAP_INDEX)
    expect: Literal["allow", "deny"]
    rule: str | None = None


class PolicyTestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tests: list[PolicyTestCase]


@dataclass(frozen=True, slots=True)
class TestResult:
    __test__ = False  # not a pytest class, despite the name

    name: str
    passed: bool
    expected: str  # "allow" | "deny", plus " by <rule>" when a rule was expected
    got: Decision
    message: str  # empty when passed

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"{mark} {self.name}" + (f": {self.message}" if self.message else "")


def load_test_file(path: Path) -> list[PolicyTestCase]:
    source = str(path)
    data = parse_yaml(source, read_text(Path(path)))
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'tests' list")
    try:
        return PolicyTestFile.model_validate(data).tests
    except ValidationError as exc:
        raise ConfigError(format_errors(source, exc, data, _fields)) from None


def _fields(loc: tuple[int | str, ...]) -> list[str]:
    model = PolicyTestCase if loc[:1] == ("tests",) else PolicyTestFile
    return list(model.model_fields)


def run_case(policy_set: PolicySet, case: PolicyTestCase) -> TestResult:
    ttl = case.token_ttl
    if ttl is None:
        ttl = policy_set.max_ttl(case.principal, case.resource, case.map_index)
    req = Request(
        case.principal, case.action, case.resource, case.object, ttl, case.at, case.map_index
    )
    got = policy_set.decide(req)
    outcome = "allow" if got.allowed else "deny"
    expected = case.expect + (f" by {case.rule}" if case.rule else "")
    problems: list[str] = []
    if outcome != case.expect:
        problems.append(f"expected {case.expect}, got {outcome}")
    if case.rule is not None and got.rule != case.rule:
        problems.append(f"expected rule {case.rule}, got {got.rule or 'no rule'}")
    message = "; ".join(problems)
    if message:
        message += f" ({got.explain()})"
    return TestResult(case.name, not problems, expected, got, message)


def run_policy_tests(policy_set: PolicySet, test_file: Path) -> list[TestResult]:
    """Run every case in ``test_file``; ConfigError if the file itself is invalid."""
    return [run_case(policy_set, case) for case in load_test_file(test_file)]
