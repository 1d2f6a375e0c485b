"""Shared helpers: build policy sets from rule dicts or YAML text without touching disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockgate.policy import PolicySet, parse_policies

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def rule(rid: str, effect: str = "allow", **kw: Any) -> dict[str, Any]:
    """A rule dict with permissive defaults; override any field by keyword."""
    base: dict[str, Any] = {
        "id": rid,
        "effect": effect,
        "principals": ["*"],
        "actions": ["*"],
        "resources": ["*"],
    }
    base.update(kw)
    return base


@pytest.fixture
def build() -> Callable[..., PolicySet]:
    def _build(*files: list[dict[str, Any]] | tuple[str, list[dict[str, Any]]]) -> PolicySet:
        docs = []
        for i, f in enumerate(files):
            name, rules = f if isinstance(f, tuple) else (f"team{i}.yaml", f)
            docs.append((name, {"rules": rules}))
        return parse_policies(docs)

    return _build
