"""Reading ``lockgate.yaml``: YAML text to a validated :class:`LockgateConfig`.

Every mistake raises :class:`~lockgate.errors.ConfigError` naming the file, the line (when
the configuration came from a file) and the field path as written in the file, e.g.
``lockgate.yaml:12: resources[0].conn_idd: unknown field; did you mean 'conn_id'?``, with
what was expected: the closest valid field names of that section for a misspelt key, the
allowed values (and the closest of them) for a wrong choice. A rejected value is echoed back
unless its field may hold a secret; the value of an unknown key never is (it may be a
misspelt secret field). Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from lockgate.config.model import LockgateConfig
from lockgate.config.yaml_source import FieldPath, LineOf, parse_yaml, yaml_lines
from lockgate.errors import ConfigError

# Fields whose rejected value is never echoed back in an error message.
_SECRETISH = re.compile(r"(?i)secret|password|token")
# Fields holding a file path, resolved against the config file's directory.
_PATH_KEYS = frozenset(
    {
        "cert",
        "key",
        "public_key",
        "jwks_file",
        "data_dir",
        "jsonl",
        "ocsf",
        "ca_file",
        "password_file",
        "master_key_file",
        # alerts' notifiers, vault AppRole secret ids, tracing's OTLP headers
        "url_file",
        "routing_key_file",
        "hmac_key_file",
        "secret_id_file",
        "otlp_headers_file",
    }
)
# Quoted choices in pydantic's messages: "Input should be 'debug', 'info' or 'error'".
_QUOTED = re.compile(r"'([^']*)'")
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


def _unwrap(tp: object) -> object:
    """``Annotated[X, ...]`` -> X and ``X | None`` -> X, as often as they nest."""
    while True:
        args = typing.get_args(tp)
        if typing.get_origin(tp) is typing.Annotated:
            tp = args[0]
        elif _is_union(tp) and len(members := [a for a in args if a is not type(None)]) == 1:
            tp = members[0]
        else:
            return tp


def _is_union(tp: object) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _model(tp: object) -> type[BaseModel] | None:
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _tagged_member(union: object, tag: str) -> type[BaseModel] | None:
    """The member of a union of sections that pydantic names ``tag`` in an error location:
    its discriminator value (``http``), or its class name for a plain union."""
    for member in typing.get_args(union):
        model = _model(member)
        if model is not None and (
            model.__name__ == tag
            or any(
                typing.get_origin(f.annotation) is typing.Literal
                and tag in typing.get_args(f.annotation)
                for f in model.model_fields.values()
            )
        ):
            return model
    return None


def _step(tp: object, part: str | int) -> tuple[object, bool] | None:
    """One step of an error location into type ``tp``: (the type there, whether ``part`` was
    a union tag rather than something written in the file); None when it leads nowhere."""
    tp = _unwrap(tp)
    model = _model(tp)
    if model is not None:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        return (field.annotation, False) if field is not None else None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return args[0], False
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return args[1], False
    if _is_union(tp) and isinstance(part, str):
        member = _tagged_member(tp, part)
        return (member, True) if member is not None else None
    return None


def _walk(root: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[FieldPath, object | None]:
    """An error location as written in the file (union tags dropped), and the type it ends
    at (None once the location leaves the model, e.g. at an unknown key)."""
    tp: object | None = root
    written: list[str | int] = []
    for part in loc:
        step = _step(tp, part) if tp is not None else None
        if step is None:
            tp = None
            written.append(part)
            continue
        tp, was_tag = step
        if not was_tag:
            written.append(part)
    return tuple(written), tp


def _field_names(tp: object) -> list[str]:
    """The keys a section accepts, as written in the file."""
    model = _model(tp)
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items() if not f.exclude]


def _closest(word: str, choices: list[str]) -> list[str]:
    return difflib.get_close_matches(word, choices, n=3, cutoff=0.6)


def _did_you_mean(matches: list[str]) -> str:
    return "; did you mean " + " or ".join(repr(m) for m in matches) + "?" if matches else ""


def _unknown_field(root: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    """What to say of a key the section does not have: the closest valid keys, else all."""
    _, section = _walk(root, loc[:-1])
    valid = _field_names(section)
    close = _closest(str(loc[-1]), valid)
    if close or not valid:
        return "unknown field" + _did_you_mean(close)
    return f"unknown field (valid here: {', '.join(valid)})"


def _readable_loc(root: type[BaseModel], e: ErrorDetails) -> FieldPath:
    """The field path as written in the file: no union tags; the tag field when it is wrong."""
    parts, _ = _walk(root, e["loc"])
    if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
        parts += (str(e.get("ctx", {}).get("discriminator", "kind")).strip("'"),)
    return parts


def _message(root: type[BaseModel], e: ErrorDetails) -> tuple[str, str]:
    """Pydantic's message in the file's words, and a hint: the closest valid choice if any."""
    ctx = e.get("ctx", {})
    if e["type"] == "extra_forbidden":
        return _unknown_field(root, e["loc"]), ""
    if e["type"] == "literal_error":
        allowed = _QUOTED.findall(ctx["expected"])
        return e["msg"], _did_you_mean(_closest(str(e["input"]), allowed))
    if e["type"] == "union_tag_invalid":
        field, tag, expected = ctx["discriminator"].strip("'"), ctx["tag"], ctx["expected_tags"]
        hint = _did_you_mean(_closest(str(tag), _QUOTED.findall(expected)))
        return f"unknown {field} {tag!r}; expected one of {expected}", hint
    return e["msg"].removeprefix("Value error, "), ""


def _path_in_message(msg: str) -> FieldPath:
    """``resources[1].name: duplicate ...`` -> ("resources", 1, "name"); () when none."""
    head = _MESSAGE_PATH.match(msg)
    if head is None:
        return ()
    return tuple(int(index) if index else name for index, name in _PATH_PART.findall(head.group(1)))


def _at(source: str, line_of: LineOf | None, path: FieldPath) -> str:
    """``lockgate.yaml:12: `` when the line of ``path`` is known, else nothing."""
    line = line_of(path) if line_of is not None and path else None
    return f"{source}:{line}: " if line is not None else ""


def format_validation_error(
    source: str,
    err: ValidationError,
    line_of: LineOf | None = None,
    root: type[BaseModel] = LockgateConfig,
) -> str:
    """One line per mistake: ``file:N: field.path: what was expected (got value)``.

    ``root`` is the model that was validated, whose fields the suggestions come from.
    """
    out = [f"{source}: invalid configuration"]
    for e in err.errors():
        parts = _readable_loc(root, e)
        loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts)
        loc = loc.replace(".[", "[")
        msg, hint = _message(root, e)
        if not loc:
            # Cross-reference checks run on the whole model and put the field path in the
            # message themselves ("resources[1].credential: ..."); show that as the path.
            where = _at(source, line_of, _path_in_message(msg))
            out.append(f"  {where}{msg}{hint}" if ": " in msg else f"  <root>: {msg}{hint}")
            continue
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        if _SECRETISH.search(str(e["loc"][-1])) or e["type"] == "extra_forbidden":
            shown = ""  # someone may have pasted the secret itself where its hash belongs
        out.append(f"  {_at(source, line_of, parts)}{loc}: {msg}{shown}{hint}")
    return "\n".join(out)
