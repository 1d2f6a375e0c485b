"""The operations docs say what the code does: their examples load, their names exist.

- Every ```yaml block of the pages below is validated with the real loaders: a
  ``quotas:``/``rules:`` block as a policy file, a block of top-level config sections with
  each section's own model and then as a config of only those sections, a list of
  credentials (the fragments credentials.md shows one at a time) as credential entries. A
  renamed or removed field, a misspelt alert kind: the test fails and names the page and
  block. A block that is another program's file is listed in ``FOREIGN`` and skipped.
- Every ``lockgate_*`` metric a page names exists with the labels it gives; metrics.md lists
  each one with its labels, and each gauge with how it combines under ``--workers``.
- The field tables of alerts.md, tracing.md and credentials.md give the models' defaults.
- Links and anchors between the pages resolve.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from lockgate import metrics
from lockgate.alerts.dispatch import ALERTS_SENT
from lockgate.audit.door import AUDIT_QUEUE
from lockgate.config.alerts import AlertSettings, NotifierSettings
from lockgate.config.console import ConsoleOidc, ConsoleSettings
from lockgate.config.credentials import Credential, KeyVaultCredential, VaultKvCredential
from lockgate.config.model import LockgateConfig
from lockgate.config.tracing import TracingSettings
from lockgate.policy.loader import parse_policy_texts

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ("quotas.md", "alerts.md", "tracing.md", "credentials.md", "metrics.md", "audit.md",
         "console.md")  # fmt: skip
#: Blocks that are not Lockgate's: (page, first top-level key).
FOREIGN = {("tracing.md", "receivers")}  # an OpenTelemetry Collector config

_BLOCK_RE = re.compile(r"^[ \t]*```yaml\n(.*?)^[ \t]*```", flags=re.S | re.M)


def _blocks(page: str) -> list[str]:
    text = (DOCS / page).read_text(encoding="utf-8")
    return [_dedent(b) for b in _BLOCK_RE.findall(text)]


def _dedent(block: str) -> str:
    """A block inside a list item is indented as a whole; YAML wants its first column."""
    lines = block.splitlines()
    indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return "\n".join(x[indent:] for x in lines) + "\n"


def _examples() -> list[tuple[str, int, str]]:
    return [(page, n, block) for page in PAGES for n, block in enumerate(_blocks(page))]


def _validate(page: str, block: str) -> str:
    """Validate one block; what it was checked as."""
    data = yaml.safe_load(block)
    if isinstance(data, list):  # credentials.md shows single credential entries
        TypeAdapter(list[Credential]).validate_python(data)
        return "credentials"
    assert isinstance(data, dict) and data, "expected a mapping or a list of credentials"
    if (page, next(iter(data))) in FOREIGN:
        return "foreign"
    if set(data) <= {"rules", "quotas"}:
        parse_policy_texts([(f"<{page}>", block)])
        return "policy"
    fields = LockgateConfig.model_fields
    unknown = sorted(set(data) - set(fields))
    assert not unknown, f"not a config section: {unknown}"
    for section, value in data.items():
        model = fields[section].annotation
        assert model is not None
        TypeAdapter(model).validate_python(value)
    # The sections together, as a config of only them: the checks across sections and
    # entries (a Key Vault credential's identity, duplicate names) run too.
    LockgateConfig.model_validate(data)
    return "config"


@pytest.mark.parametrize(
    ("page", "n", "block"), _examples(), ids=[f"{p}#{n}" for p, n, _ in _examples()]
)
def test_yaml_example_loads(page: str, n: int, block: str) -> None:
    _validate(page, block)


def test_every_page_has_its_examples() -> None:
    """A page whose examples vanished (a fence renamed) would pass the test above silently."""
    for page in PAGES:
        assert _blocks(page), page


def test_every_quota_example_in_the_docs_loads() -> None:
    """Pages beyond the operations ones (policy, engines) show quota blocks too."""
    seen = 0
    for path in sorted(DOCS.glob("*.md")):
        for block in _blocks(path.name):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and "quotas" in data:
                parse_policy_texts([(f"<{path.name}>", block)])
                seen += 1
    assert seen >= 2


@pytest.mark.parametrize(
    ("page", "block"),
    [
        ("quotas.md", "quotas:\n  - id: q\n    principals: ['*']\n    resources: ['*']\n"
         "    rate: 1/s\n    max_wait: 2s\n"),
        ("alerts.md", "alerts:\n  notifiers:\n    - {name: a, type: webhook, url: x}\n"),
        ("tracing.md", "tracing:\n  endpoint: https://collector:4318\n"),
        ("metrics.md", "metrics:\n  dag_label: {top_n: 20}\n"),
        ("credentials.md", "- {name: c, type: vault_kv, address: https://v:8200, path: p,\n"
         "   field: f, auth: {method: jwt, role: r, audiance: v}}\n"),
    ],
)  # fmt: skip
def test_a_renamed_field_fails(page: str, block: str) -> None:
    """The check is strict: a field the models do not know is an error, not ignored."""
    with pytest.raises(Exception):  # noqa: B017 - ConfigError or ValidationError
        _validate(page, block)


# -- metric names and labels the docs quote --------------------------------------------------

#: Metrics registered outside lockgate.metrics (imported here so the registry holds them).
_ELSEWHERE = (ALERTS_SENT, AUDIT_QUEUE)
_SUFFIXES = "total|seconds|records|depth|connections"
_METRIC_RE = re.compile(rf"\b(lockgate_[a-z_]+_(?:{_SUFFIXES}))\b(\{{[^}}`]*\}})?")
_ROW_RE = re.compile(
    r"^\| `(lockgate_[a-z_]+)` \| (?:counter|gauge|histogram) \| *([^|]*?) *\|", flags=re.M
)
_MODE_RE = re.compile(r"^\| `(lockgate_[a-z_]+)`[^|]*\| [a-z ]+\(`(\w+)`\) \|", flags=re.M)


def _registered() -> dict[str, tuple[str, ...]]:
    """Every lockgate metric a gateway registers (under each name it exposes), with labels."""
    out: dict[str, tuple[str, ...]] = {}
    for collector, names in metrics.REGISTRY._collector_to_names.items():
        labels = tuple(getattr(collector, "_labelnames", ()) or ())
        for name in names:
            if name.startswith("lockgate_") and not name.endswith("_created"):
                out[name] = labels
    return out


def test_every_metric_the_docs_name_exists_with_those_labels() -> None:
    registered = _registered()
    seen = 0
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for name, braces in _METRIC_RE.findall(text):
            assert name in registered, f"{path.name}: {name} is no metric of the gateway"
            seen += 1
            for part in (braces or "{}")[1:-1].split(","):
                label = part.split("=")[0].strip()
                if label and label != "...":
                    assert label in registered[name], f"{path.name}: {name} has no label {label}"
    assert seen >= 20


def test_the_metrics_tables_list_each_metrics_labels() -> None:
    registered = _registered()
    rows = _ROW_RE.findall((DOCS / "metrics.md").read_text(encoding="utf-8"))
    assert len(rows) >= 20
    for name, labels in rows:
        documented = tuple(re.findall(r"`([a-z_]+)`", labels))
        assert documented == registered[name], name
    missing = {n for n in registered if not n.endswith(("_bucket", "_count", "_sum"))}
    missing -= {name for name, _ in rows}
    missing -= {n.removesuffix("_total") for n, _ in rows}  # a counter's family name
    assert not missing, f"metrics.md does not list {sorted(missing)}"


def test_the_workers_table_gives_each_gauges_mode() -> None:
    """How a gauge combines under ``serve --workers`` is what its ``multiprocess_mode`` says."""
    modes = {
        name: getattr(collector, "_multiprocess_mode", None)
        for collector, names in metrics.REGISTRY._collector_to_names.items()
        for name in names
    }
    rows = _MODE_RE.findall((DOCS / "metrics.md").read_text(encoding="utf-8"))
    assert len(rows) >= 6
    for name, mode in rows:
        assert modes[name] == mode, name


# -- links between the pages -----------------------------------------------------------------


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_anchor(h) for h in re.findall(r"(?m)^#+ (.+)$", text)}


def test_links_between_the_docs_resolve() -> None:
    """A renamed heading or page breaks the links the other pages give to it."""
    checked = 0
    for page in [*sorted(DOCS.glob("*.md")), DOCS.parent / "README.md"]:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            assert path.exists(), f"{page.name}: {link}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{page.name}: {link}"
            checked += 1
    assert checked >= 50


# -- defaults the field tables give ----------------------------------------------------------

_REQUIRED = {"required", "(required)"}
_NONE = {"none", "latest", "system cas"}


def _tables(page: str) -> list[list[list[str]]]:
    """The Markdown tables of ``page`` whose header has a ``default`` column: rows of cells."""
    out: list[list[list[str]]] = []
    rows: list[list[str]] = []
    for line in [*(DOCS / page).read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows and "default" in rows[0]:
            out.append(rows)
        rows = []
    return out


def _model_at(model: type[BaseModel], dotted: str) -> tuple[type[BaseModel], str]:
    *parents, name = dotted.split(".")
    for parent in parents:
        inner = model.model_fields[parent].annotation
        optional = [a for a in get_args(inner) if a is not type(None)]  # `X | None` is X here
        inner = optional[0] if len(optional) == 1 else inner
        assert isinstance(inner, type) and issubclass(inner, BaseModel), dotted
        model = inner
    return model, name


def _check_defaults(page: str, table: int, model: type[BaseModel]) -> int:
    """Every row of the table's field column is a field of ``model`` with that default."""
    rows = _tables(page)[table]
    column = rows[0].index("default")
    checked = 0
    for row in rows[2:]:
        dotted, shown = row[0].strip("`"), row[column].strip("`").lower()
        owner, name = _model_at(model, dotted)
        field = owner.model_fields.get(name)
        assert field is not None, f"{page}: {dotted} is no field of {owner.__name__}"
        if shown in _REQUIRED:
            assert field.is_required(), f"{page}: {dotted} is not required"
        elif shown in _NONE:
            unset = not field.is_required() and field.get_default() in (None, [])
            assert unset, f"{page}: {dotted} has a default"
        elif re.fullmatch(r"-?\d+(\.\d+)?", shown):
            assert float(field.get_default()) == float(shown), f"{page}: {dotted}"
        elif shown in ("true", "false"):
            assert field.get_default() is (shown == "true"), f"{page}: {dotted}"
        elif shown.startswith(("http", "lockgate", "secret", "value", "approle", "jwt")):
            assert str(field.get_default()).lower() == shown, f"{page}: {dotted}"
        else:
            continue  # a default in words ("every kind"): read, not checked
        checked += 1
    return checked


@pytest.mark.parametrize(
    ("page", "table", "model"),
    [
        ("alerts.md", 0, NotifierSettings),
        ("alerts.md", 1, AlertSettings),
        ("tracing.md", 0, TracingSettings),
        ("credentials.md", 0, KeyVaultCredential),  # the fields both vault types share
        ("credentials.md", 1, KeyVaultCredential),
        ("credentials.md", 2, VaultKvCredential),
    ],
)
def test_the_field_tables_give_the_models_defaults(
    page: str, table: int, model: type[BaseModel]
) -> None:
    assert _check_defaults(page, table, model) >= 3


def test_the_console_tables_give_every_field_with_its_default() -> None:
    """configuration.md's `console` tables: every field of ConsoleSettings and ConsoleOidc,
    each with the model's default."""
    tables = [t for t in _tables("configuration.md") if t[2][0] in ("`enabled`", "`oidc.issuer`")]
    assert len(tables) == 2, "the console's two field tables"
    named: set[str] = set()
    for rows in tables:
        named |= {row[0].strip("`") for row in rows[2:]}
    fields = {*ConsoleSettings.model_fields}
    fields |= {f"oidc.{name}" for name in ConsoleOidc.model_fields}
    assert named == fields
    index = _tables("configuration.md").index(tables[0])
    assert _check_defaults("configuration.md", index, ConsoleSettings) >= 5
    assert _check_defaults("configuration.md", index + 1, ConsoleSettings) >= 3
