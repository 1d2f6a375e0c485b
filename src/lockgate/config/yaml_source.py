"""YAML files that people write: parsed with errors naming file, line and column, and the
line of any field looked up again when a later check refuses it.

Shared by the configuration loader and the policy loader, so a mistake reads the same in
``lockgate.yaml`` and in a policy file.
"""

from __future__ import annotations

from collections.abc import Callable

import yaml

from lockgate.errors import ConfigError

# A field's place in a document: ("resources", 1, "kind") is ``resources[1].kind``.
FieldPath = tuple[str | int, ...]
# Field path -> 1-based line of that field (of its nearest present parent when it is absent).
LineOf = Callable[[FieldPath], int | None]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> object:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) or key is None:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _mapping_without_duplicates,
)


def parse_yaml(source: str, text: str, *, unique_keys: bool = True) -> object:
    """Parse one YAML document; ConfigError names the file, line and column.

    ``unique_keys``: a key given twice in one mapping is an error (PyYAML would silently
    keep the last one, which for a key like ``effect`` changes the meaning of a rule).
    """
    loader = _UniqueKeyLoader if unique_keys else yaml.SafeLoader
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - SafeLoader or a subclass of it
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}:" if mark else ""
        raise ConfigError(
            f"{source}:{where} not valid YAML: {getattr(exc, 'problem', None) or exc}"
        ) from None


def yaml_lines(text: str) -> LineOf:
    """The :data:`LineOf` of ``text``. The text is composed again only when asked: errors."""

    def line_of(loc: FieldPath) -> int | None:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            return None
        line = None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                pair = next((kv for kv in node.value if kv[0].value == part), None)
                if pair is None:
                    break
                line, node = pair[0].start_mark.line + 1, pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    return line_of
