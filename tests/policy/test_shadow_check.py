"""``lockgate config check`` names a shadow policy file the gateway would leave unloaded."""

from __future__ import annotations

from pathlib import Path

from lockgate.policy.lint import policy_problems

ENFORCED = """\
rules:
  - id: r1
    effect: allow
    principals: ["airflow:prod/*"]
    actions: [read]
    resources: [orders-api]
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_broken_shadow_file_is_a_problem_naming_its_line(tmp_path: Path) -> None:
    enforced = _write(tmp_path, "p.yaml", ENFORCED)
    shadow = _write(tmp_path, "s.yaml", "mode: shadow\n" + ENFORCED.replace("[read]", "[reed]"))
    problems = policy_problems(["*.yaml"], [enforced, shadow], {"orders-api"})
    assert len(problems) == 1
    assert problems[0].startswith(f"shadow policy not loaded: {shadow}:6:")
    assert "reed" in problems[0]


def test_a_sound_shadow_file_is_no_problem(tmp_path: Path) -> None:
    enforced = _write(tmp_path, "p.yaml", ENFORCED)
    shadow = _write(tmp_path, "s.yaml", "mode: shadow\n" + ENFORCED.replace("[read]", "[write]"))
    assert policy_problems(["*.yaml"], [enforced, shadow], {"orders-api"}) == []
