"""Reading ``lockgate.yaml``: YAML text to a validated :class:`LockgateConfig`.

Every mistake raises :class:`~lockgate.errors.ConfigError` naming the file, the line (when
the configuration came from a file) and the field path as written in the file, e.g.
``resources[1].kind``, with what was expected. A rejected value is echoed back unless its
field may hold a secret. Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from lockgate.config.model import LockgateConfig
from lockgate.config.yaml_source import FieldPath, LineOf, parse_yaml, yaml_lines
from lockgate.errors import ConfigError

# Fields whose rejected value is never echoed back in an error message.
_SECRETISH = re.compile(r"(?i)secret|password|token")
# Fields holding a file path, resolved against the config file's directory.
_PATH_KEYS = frozenset({"cert", "key", "public_key", "data_dir", "jsonl", "ca_file"})
# Tags pydantic puts in the location of a discriminated union member; users never wrote them.
_UNION_TAGS = frozenset({"http", "cql", "client_secret", "private_key_jwt", "static",
                         "oauth2_client_credentials", "managed_identity"})  # fmt: skip
_UNION_FIELD = {"resources": "kind", "credentials": "type", "proof": "type"}
# The field path a cross-section check puts at the start of its message.
_MESSAGE_PATH = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*): ")
_PATH_PART = re.compile(r"\[(\d+)\]|\.?([A-Za-z_]\w*)")


def load_config(path: Path | str) -> LockgateConfig:
    """Read and validate ``path``. Raises ConfigError naming the file, line and field."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc.strerror}") from None
    # A key given twice keeps the last, as lockgate.yaml always has (policy files refuse it).
    data = parse_yaml(str(p), text, unique_keys=False)
    return _validate(data, p, yaml_lines(text))


def parse_config(data: object, source: Path | str = "<config>") -> LockgateConfig:
    """Validate already-parsed YAML. ``source`` is the file it came from, or a ``<label>``.

    Relative paths (and the default ``data_dir``) are resolved against the file's directory;
    for a ``<label>`` source, against the current directory.
    """
    return _validate(data, source, None)


def _validate(data: object, source: Path | str, line_of: LineOf | None) -> LockgateConfig:
    is_file = not str(source).startswith("<")
    src = Path(source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    base = src.parent.resolve() if is_file else Path.cwd()
    fields = _resolve_paths(data, base)
    # The default data_dir follows the same rule as an explicit one, so the state of a
    # config in /etc/lockgate never lands in whatever directory the CLI was started from.
    fields.setdefault("data_dir", str(base / "data"))
    fields["source"] = str(src.resolve()) if is_file else None
    try:
        return LockgateConfig.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(source), exc, line_of)) from None


def _resolve_paths(mapping: dict[object, object], base: Path) -> dict[object, object]:
    """Make relative file paths absolute against the config file's directory."""
    return {
        k: (
            str((base / v).resolve())
            if k in _PATH_KEYS and isinstance(v, str) and not Path(v).is_absolute()
            else _resolve_within(v, base)
        )
        for k, v in mapping.items()
    }


def _resolve_within(value: object, base: Path) -> object:
    if isinstance(value, dict):
        return _resolve_paths(value, base)
    if isinstance(value, list):
        return [_resolve_within(v, base) for v in value]
    return value


def _readable_loc(e: ErrorDetails) -> FieldPath:
    """The field path as written in the file: no union tags; the tag field when it is wrong."""
    loc = e["loc"]
    parts = [
        p
        for i, p in enumerate(loc)
        if not (
            i > 0 and p in _UNION_TAGS and (isinstance(loc[i - 1], int) or loc[i - 1] == "proof")
        )
    ]
    if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
        owner = next((str(p) for p in reversed(parts) if isinstance(p, str)), "")
        parts.append(_UNION_FIELD.get(owner, "kind"))
    return tuple(parts)


def _path_in_message(msg: str) -> FieldPath:
    """``resources[1].name: duplicate ...`` -> ("resources", 1, "name"); () when none."""
    head = _MESSAGE_PATH.match(msg)
    if head is None:
        return ()
    return tuple(int(index) if index else name for index, name in _PATH_PART.findall(head.group(1)))


def _at(line_of: LineOf | None, path: FieldPath) -> str:
    line = line_of(path) if line_of is not None and path else None
    return f"line {line}: " if line is not None else ""


def format_validation_error(
    source: str, err: ValidationError, line_of: LineOf | None = None
) -> str:
    """One line per mistake: ``line N: field.path: what was expected (got value)``."""
    out = [f"{source}: invalid configuration"]
    for e in err.errors():
        parts = _readable_loc(e)
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts)
        loc = loc.replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:
            # Cross-reference checks run on the whole model and put the field path in the
            # message themselves ("resources[1].credential: ..."); show that as the path.
            where = _at(line_of, _path_in_message(msg))
            out.append(f"  {where}{msg}" if ": " in msg else f"  <root>: {msg}")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if _SECRETISH.search(str(e["loc"][-1])):
            shown = ""  # someone may have pasted the secret itself where its hash belongs
        out.append(f"  {_at(line_of, parts)}{loc}: {msg}{shown}")
    return "\n".join(out)
