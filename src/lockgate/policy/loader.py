"""Read policy files into one :class:`PolicySet`.

Three entry points, one pipeline (paths -> text -> YAML -> validated rules -> PolicySet):
:func:`load_policy_files` for paths on disk, :func:`parse_policy_texts` for already-read
text (the store reads each file once, hashes and parses the same bytes), and
:func:`parse_policies` for already-parsed data (tests, tooling). YAML is read as
:mod:`lockgate.config.yaml_source` reads it, for policy files and ``lockgate.yaml`` alike.

Every failure is a :class:`~lockgate.errors.ConfigError` naming the file, the line (when the
text is at hand), the field path and the rule id. YAML duplicate keys are errors (PyYAML
would silently keep the last one, which for a key like ``effect`` changes the meaning of a
rule). Rule ids are unique across all files; a clash names both files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from lockgate.config.yaml_source import LineOf, parse_yaml, yaml_lines
from lockgate.errors import ConfigError
from lockgate.policy.engine import PolicySet, Quota, Rule
from lockgate.policy.globs import is_literal
from lockgate.policy.model import located, validate_file

__all__ = [
    "LoadedPolicy",
    "load_policy_files",
    "load_policy_texts",
    "parse_policies",
    "parse_policy_texts",
    "parse_yaml",
    "read_text",
    "yaml_lines",
]


def parse_policies(
    docs: Iterable[tuple[str, object]],
    known_resources: set[str] | None = None,
    texts: Mapping[str, str] | None = None,
    *,
    shadow: bool = False,
) -> PolicySet:
    """Build a PolicySet from ``(source, parsed_yaml)`` pairs, in order; ``texts`` (source ->
    YAML text) lets errors name their line. Only files of one mode are taken: the enforced
    ones, or with ``shadow`` the shadow ones."""
    rules: list[Rule] = []
    quotas: list[Quota] = []
    sources: list[str] = []
    seen: dict[str, tuple[str, int]] = {}
    seen_quotas: dict[str, tuple[str, int]] = {}
    for source, data in docs:
        if is_shadow(data) != shadow:
            continue  # the other set's file (see load_policy_texts)
        sources.append(source)
        text = texts.get(source) if texts is not None else None
        line_of = yaml_lines(text) if text is not None else None
        try:
            pf = validate_file(source, data, line_of)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for i, spec in enumerate(pf.rules):
            if spec.id in seen:
                other, j = seen[spec.id]
                raise ConfigError(
                    f"{located(source, ('rules', i, 'id'), line_of)}: rules[{i}].id: "
                    f"duplicate rule id {spec.id!r}, already defined in {other} rules[{j}]"
                )
            seen[spec.id] = (source, i)
            _check_resources(source, "rules", i, spec.id, spec.resources, known_resources, line_of)
            rules.append(Rule(spec, source, i))
        for i, quota in enumerate(pf.quotas):
            if quota.id in seen_quotas:
                other, j = seen_quotas[quota.id]
                raise ConfigError(
                    f"{located(source, ('quotas', i, 'id'), line_of)}: quotas[{i}].id: "
                    f"duplicate quota id {quota.id!r}, already defined in {other} quotas[{j}]"
                )
            seen_quotas[quota.id] = (source, i)
            _check_resources(
                source, "quotas", i, quota.id, quota.resources, known_resources, line_of
            )
            quotas.append(Quota(quota, source, i))
    return PolicySet(rules, sources, quotas=quotas)


def _check_resources(
    source: str,
    section: str,
    i: int,
    entry_id: str,
    resources: list[str],
    known_resources: set[str] | None,
    line_of: LineOf | None,
) -> None:
    """A literal resource name that is not in the catalog is an error (see
    :func:`load_policy_files`)."""
    if known_resources is None:
        return
    kind = "rule" if section == "rules" else "quota"
    for k, pattern in enumerate(resources):
        if is_literal(pattern) and pattern not in known_resources:
            known = ", ".join(sorted(known_resources)) or "none configured"
            where = located(source, (section, i, "resources", k), line_of)
            raise ConfigError(
                f"{where}: {section}[{i}].resources[{k}] ({kind} {entry_id}): "
                f"unknown resource {pattern!r} (known: {known})"
            )


def parse_policy_texts(
    docs: Iterable[tuple[str, str]], known_resources: set[str] | None = None
) -> PolicySet:
    """Build the enforced PolicySet from ``(source, yaml_text)`` pairs, in order (shadow files
    are left out)."""
    return load_policy_texts(docs, known_resources).enforced


def is_shadow(data: object) -> bool:
    """Parsed YAML of a ``mode: shadow`` file."""
    return isinstance(data, dict) and data.get("mode") == "shadow"


# A top-level ``mode: shadow`` line: how a shadow file whose YAML does not parse is still told
# apart (its error must not break the enforced set).
_SHADOW_LINE = re.compile(r"""^mode:[ \t]*["']?shadow["']?[ \t]*(#.*)?$""", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LoadedPolicy:
    """The enforced set, and the shadow set (None without shadow files or when one is
    broken: ``shadow_error`` then says where)."""

    enforced: PolicySet
    shadow: PolicySet | None = None
    shadow_error: str | None = None


def load_policy_texts(
    docs: Iterable[tuple[str, str]], known_resources: set[str] | None = None
) -> LoadedPolicy:
    """Build the enforced set and the shadow set from ``(source, yaml_text)`` pairs.

    Raises :class:`ConfigError` for an enforced file's error only."""
    pairs = list(docs)  # a file listed twice stays twice (its rule ids then clash)
    texts = dict(pairs)
    enforced_docs: list[tuple[str, object]] = []
    shadow_docs: list[tuple[str, object]] = []
    shadow_error: str | None = None
    for src, text in pairs:
        try:
            data = parse_yaml(src, text)
        except ConfigError as exc:
            if _SHADOW_LINE.search(text) is None:
                raise
            shadow_error = shadow_error or str(exc)
            continue
        (shadow_docs if is_shadow(data) else enforced_docs).append((src, data))
    enforced = parse_policies(enforced_docs, known_resources, texts)
    if shadow_error is not None or not shadow_docs:
        return LoadedPolicy(enforced, None, shadow_error)
    try:
        shadow = _shadow_set(enforced, shadow_docs, known_resources, texts)
    except ConfigError as exc:
        return LoadedPolicy(enforced, None, str(exc))
    return LoadedPolicy(enforced, shadow)


def _shadow_set(
    enforced: PolicySet,
    docs: list[tuple[str, object]],
    known_resources: set[str] | None,
    texts: Mapping[str, str],
) -> PolicySet:
    """The enforced rules with the shadow files' rules laid over them (same id: replaced;
    new id: appended). A shadow file may not hold quotas (they would not be watched)."""
    # Validate as enforced files would be (same messages, ids unique among shadow files).
    watched = parse_policies(docs, known_resources, texts, shadow=True)
    for src, data in docs:
        if isinstance(data, dict) and data.get("quotas"):
            line_of = yaml_lines(texts[src]) if src in texts else None
            raise ConfigError(
                f"{located(src, ('quotas',), line_of)}: quotas: a shadow file cannot hold "
                "quotas (they would be neither enforced nor watched)"
            )
    overlay = {r.id: r for r in watched.rules}
    rules = [overlay.pop(r.id, r) for r in enforced.rules]
    rules.extend(overlay.values())
    return PolicySet(rules, (*enforced.sources, *watched.sources))


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: policy file is not valid UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read policy file: {exc.strerror or exc}") from None


def load_policy_files(paths: list[Path], known_resources: set[str] | None = None) -> PolicySet:
    """Load and validate ``paths`` (in order) into one PolicySet.

    With ``known_resources``, a literal resource name that is not in the catalog is an error
    (a typo would otherwise silently grant nothing, then grant the wrong thing once a resource
    with that name appears). Glob resource patterns that match nothing are left to lint.
    """
    return parse_policy_texts(((str(p), read_text(Path(p))) for p in paths), known_resources)
