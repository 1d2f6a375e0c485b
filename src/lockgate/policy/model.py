"""The policy file schema (pydantic, strict) and how its errors are worded.

Strategy: validate a whole file against :class:`PolicyFile` with unknown fields forbidden and
no type coercion, then turn pydantic's error list into lines that name the file, the field
path (``rules[2].actions[0]``), the line when the caller can find it (``file:7:``), the rule
id when there is one, and what was expected. YAML
quirks that bite policy authors get a hint: unquoted ``06:00`` is read by YAML as the number
360, so times must be quoted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from lockgate.config.yaml_source import FieldPath, LineOf
from lockgate.policy.mapindex import MapRanges, parse_map_indexes

ACTIONS: tuple[str, ...] = ("read", "write", "admin", "run")
Action = Literal["read", "write", "admin", "run", "*"]
Effect = Literal["allow", "deny"]

RULE_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def parse_duration(value: object) -> int:
    """``900``, ``"900"``, ``"900s"``, ``"15m"``, ``"1h30m"`` -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like '15m'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            seconds = int(text)
        else:
            m = _DURATION_RE.match(text)
            if not text or not m:
                raise ValueError("expected seconds or a duration like '15m', '1h', '90s'")
            h, mi, s = (int(g) if g else 0 for g in m.groups())
            seconds = h * 3600 + mi * 60 + s
    else:
        raise ValueError("expected seconds or a duration like '15m'")
    if seconds <= 0:
        raise ValueError("expected a positive duration")
    return seconds


def parse_clock(value: object) -> int:
    """``"HH:MM"`` (UTC) -> seconds after midnight; ``"24:00"`` allowed as an end."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(
            'expected a quoted time like "06:00" (YAML reads an unquoted 06:00 as a number)'
        )
    if not isinstance(value, str) or not _TIME_RE.match(value):
        raise ValueError('expected a time like "06:00" (HH:MM, UTC)')
    hours, minutes = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60


class TimeWindow(_Strict):
    start: str
    end: str

    @field_validator("start", "end", mode="before")
    @classmethod
    def _clock(cls, v: object) -> object:
        parse_clock(v)
        return v

    @model_validator(mode="after")
    def _distinct(self) -> TimeWindow:
        if parse_clock(self.start) % 86400 == parse_clock(self.end) % 86400:
            raise ValueError("start and end must differ (omit time_window to allow all day)")
        return self

    @property
    def start_s(self) -> int:
        return parse_clock(self.start)

    @property
    def end_s(self) -> int:
        return parse_clock(self.end)


def _optional_duration(value: object) -> int | None:
    return None if value is None else parse_duration(value)


# Seconds, written as a number or a duration like "15m"; absent: None.
OptionalDuration = Annotated[int | None, BeforeValidator(_optional_duration)]


# Map indexes, written as a number, a range "0-9" or a list of them; absent: None.
OptionalMapIndexes = Annotated[MapRanges | None, BeforeValidator(parse_map_indexes)]


class Conditions(_Strict):
    max_token_ttl: OptionalDuration = None
    time_window: TimeWindow | None = None
    map_index: OptionalMapIndexes = None
    mapped: bool | None = None

    @model_validator(mode="after")
    def _map_consistent(self) -> Conditions:
        if self.map_index is not None and self.mapped is False:
            raise ValueError(
                "map_index names mapped instances, mapped: false only the unmapped task: "
                "together they match nothing (keep one)"
            )
        return self


class RuleSpec(_Strict):
    id: str = Field(pattern=RULE_ID_RE)
    effect: Effect
    principals: list[str]
    actions: list[Action]
    resources: list[str]
    objects: list[str] = ["*"]
    conditions: Conditions = Conditions()
    description: str = ""

    @model_validator(mode="after")
    def _deny_without_ttl(self) -> RuleSpec:
        # On a deny, max_token_ttl would say "deny tokens that live at most this long": a task
        # holding a longer-lived token would escape the deny. Refused, never guessed.
        if self.effect == "deny" and self.conditions.max_token_ttl is not None:
            raise ValueError(
                "conditions.max_token_ttl cannot be on a deny rule (a longer-lived token would "
                "escape the deny); put it on the allow rules, or use time_window"
            )
        return self

    @field_validator("principals", "resources")
    @classmethod
    def _non_empty_patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.strip():
                raise ValueError("expected a non-empty pattern")
        return v


# -- quotas ----------------------------------------------------------------------------------

_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DELAY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$")
_DELAY_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_rate(value: object) -> float:
    """``5``, ``2.5``, ``"100/s"``, ``"600/m"``, ``"3600/h"`` -> per second (> 0)."""
    if isinstance(value, bool):
        raise ValueError('expected a rate like 10, "100/s" or "600/m"')
    if isinstance(value, int | float):
        rate = float(value)
    elif isinstance(value, str) and (m := _RATE_RE.match(value)):
        rate = float(m.group(1)) / _PER_UNIT[m.group(2)]
    else:
        raise ValueError('expected a rate like 10, "100/s" or "600/m"')
    if not rate > 0 or rate == float("inf"):
        raise ValueError("expected a positive rate")
    return rate


def parse_delay(value: object) -> float:
    """``0``, ``1.5``, ``"250ms"``, ``"2s"``, ``"1m"`` -> seconds (>= 0, at most 10 minutes)."""
    if isinstance(value, bool):
        raise ValueError('expected seconds or a delay like "500ms", "2s"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DELAY_RE.match(value)):
        seconds = float(m.group(1)) * _DELAY_UNIT[m.group(2)]
    else:
        raise ValueError('expected seconds or a delay like "500ms", "2s"')
    if not 0 <= seconds <= 600:
        raise ValueError("expected a delay between 0 and 10m")
    return seconds


def _positive_count(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
        raise ValueError("expected a positive whole number")
    return value


Rate = Annotated[float | None, BeforeValidator(lambda v: None if v is None else parse_rate(v))]
Delay = Annotated[float, BeforeValidator(parse_delay)]
Count = Annotated[int | None, BeforeValidator(_positive_count)]
QuotaScope = Literal["dag", "task", "all"]

#: Fields of a quota that set a limit (at least one is required).
QUOTA_LIMITS = ("rate", "concurrency", "sessions", "runs")
DEFAULT_RUN_MAX_AGE = 86400


class QuotaSpec(_Strict):
    """One entry of a policy file's ``quotas:`` list (see :mod:`lockgate.quotas`)."""

    id: str = Field(pattern=RULE_ID_RE)
    principals: list[str]
    resources: list[str]
    actions: list[Action] = ["*"]
    objects: list[str] = ["*"]
    rate: Rate = None  # requests or statements per second (token bucket)
    burst: Count = None  # bucket size; default max(1, rate)
    concurrency: Count = None  # requests or statements in flight
    sessions: Count = None  # open CQL / PostgreSQL sessions
    runs: Count = None  # Databricks / Data Factory runs started and not finished
    run_max_age: OptionalDuration = None  # a run no longer counts after this (default 24h)
    per: QuotaScope = "dag"  # dag: a budget per deployment+DAG; task: per principal; all: one
    max_delay: Delay = 0.0  # how long a request may wait for a token or a slot before refusal
    description: str = ""

    @field_validator("principals", "resources")
    @classmethod
    def _non_empty_patterns(cls, v: list[str]) -> list[str]:
        return RuleSpec._non_empty_patterns(v)

    @model_validator(mode="after")
    def _limits(self) -> QuotaSpec:
        if all(getattr(self, name) is None for name in QUOTA_LIMITS):
            raise ValueError(
                "a quota needs at least one limit: rate, concurrency, sessions or runs"
            )
        if self.rate is None and self.burst is not None:
            raise ValueError("burst is the size of a rate's bucket: set rate too (or drop it)")
        if self.runs is None and self.run_max_age is not None:
            raise ValueError("run_max_age is the age after which a run stops counting: set runs")
        return self

    @property
    def bucket_size(self) -> float:
        """The burst a rate allows (``burst``, else max(1, rate))."""
        if self.burst is not None:
            return float(self.burst)
        return max(1.0, self.rate or 0.0)

    @property
    def run_lifetime(self) -> int:
        return self.run_max_age if self.run_max_age is not None else DEFAULT_RUN_MAX_AGE


#: ``enforce``: the file's rules decide. ``shadow``: its rules are only watched: their verdict
#: is audited next to the enforced one, never acted on (see ``docs/policy.md``).
PolicyMode = Literal["enforce", "shadow"]


class PolicyFile(_Strict):
    mode: PolicyMode = "enforce"
    rules: list[RuleSpec] = []
    quotas: list[QuotaSpec] = []

    @model_validator(mode="before")
    @classmethod
    def _something(cls, data: object) -> object:
        if isinstance(data, dict) and "rules" not in data and "quotas" not in data:
            raise ValueError("expected a 'rules' list, a 'quotas' list or both")
        return data


# -- error wording ---------------------------------------------------------------------------

_FIELDS_AT: dict[str, type[BaseModel]] = {
    "": PolicyFile,
    "rule": RuleSpec,
    "quota": QuotaSpec,
    "conditions": Conditions,
    "time_window": TimeWindow,
}


def _loc_text(loc: FieldPath) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(loc: FieldPath) -> type[BaseModel]:
    """The model whose fields are allowed at ``loc`` (for 'unknown field' messages)."""
    names = [p for p in loc if isinstance(p, str)]
    if names[-1:] and names[-1] in ("conditions", "time_window"):
        return _FIELDS_AT[names[-1]]
    if names[:1] == ["quotas"]:
        return QuotaSpec
    return RuleSpec if names[:1] == ["rules"] else PolicyFile


AllowedFields = Callable[[FieldPath], Iterable[str]]


def _policy_fields(loc: FieldPath) -> Iterable[str]:
    return _model_at(loc).model_fields


def _describe(
    err: ErrorDetails, allowed_at: AllowedFields = _policy_fields
) -> tuple[FieldPath, str]:
    loc: FieldPath = tuple(err["loc"])
    kind = err["type"]
    got = err.get("input")
    shown = ""
    if not isinstance(got, dict | list) and got is not None and kind != "missing":
        shown = f" (got {got!r})"
    if kind == "literal_error":
        expected = str(err.get("ctx", {}).get("expected", ""))
        choices = expected.replace("'", "").replace(" or ", ", ")
        return loc, f"expected one of {choices}{shown}"
    if kind == "extra_forbidden":
        allowed = ", ".join(allowed_at(loc[:-1]))
        return loc, f"unknown field (allowed: {allowed})"
    if kind == "missing":
        return loc, "required field is missing"
    if kind == "list_type":
        return loc, f"expected a list{shown}"
    if kind == "string_type":
        return loc, f"expected a string{shown}"
    if kind == "bool_type":
        return loc, f"expected true or false{shown}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return loc, f"expected a mapping{shown}"
    if kind == "string_pattern_mismatch":
        return loc, f"expected letters, digits and _.:- (starting with a letter or digit){shown}"
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    return loc, f"{msg}{shown}"


def format_errors(
    source: str,
    exc: ValidationError,
    data: object,
    allowed_at: AllowedFields = _policy_fields,
    line_of: LineOf | None = None,
) -> str:
    """One line per problem: ``file:7: rules[2].actions[0] (rule x): expected ...``."""
    lines: list[str] = []
    for err in exc.errors():
        loc, msg = _describe(err, allowed_at)
        where = _loc_text(loc) or "<top level>"
        rule_id = _rule_id_at(data, loc)
        if rule_id:
            where += f" ({'quota' if loc[:1] == ('quotas',) else 'rule'} {rule_id})"
        lines.append(f"{located(source, loc, line_of)}: {where}: {msg}")
    return "\n".join(lines)


def located(source: str, loc: FieldPath, line_of: LineOf | None) -> str:
    """``file:line`` when the line of ``loc`` is known, else ``file``."""
    line = line_of(loc) if line_of is not None else None
    return f"{source}:{line}" if line else source


def _rule_id_at(data: object, loc: FieldPath) -> str | None:
    if (
        len(loc) >= 2
        and loc[0] in ("rules", "quotas")
        and isinstance(loc[1], int)
        and isinstance(data, dict)
    ):
        entries = data.get(loc[0])
        if (
            isinstance(entries, list)
            and 0 <= loc[1] < len(entries)
            and isinstance(entries[loc[1]], dict)
        ):
            rid = entries[loc[1]].get("id")
            if isinstance(rid, str) and rid:
                return rid
    return None


def validate_file(source: str, data: object, line_of: LineOf | None = None) -> PolicyFile:
    """Validate parsed YAML. Raises ValueError with the worded message (caller wraps it)."""
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ValueError(
            f"{source}: expected a mapping with a 'rules' or 'quotas' list (got {kind})"
        )
    try:
        return PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(format_errors(source, exc, data, line_of=line_of)) from None
