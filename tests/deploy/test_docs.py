"""docs/deployment.md stays true: its links and anchors resolve, every ``lockgate`` command
it gives is one the parser accepts, and the ``state:`` example it shows loads."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from lockgate.config import parse_config
from tests.deploy._manifests import DEPLOYMENT_DOC, REPO, cli_problem

TEXT = DEPLOYMENT_DOC.read_text(encoding="utf-8")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return {_anchor(m) for m in re.findall(r"(?m)^#+ (.+)$", text)}


def test_links_and_anchors_resolve() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", TEXT)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        target, _, anchor = link.partition("#")
        path = (DEPLOYMENT_DOC.parent / target).resolve() if target else DEPLOYMENT_DOC
        assert path.exists(), link
        if anchor:
            assert anchor in _anchors(path), link


def _commands() -> list[str]:
    spans = re.findall(r"`(lockgate [^`]+)`", TEXT)
    spans += re.findall(r"-- (lockgate [^`\n]+)", TEXT)  # kubectl exec ... -- lockgate ...
    return [re.split(r"\s[<>|]", s)[0].strip() for s in spans]


def test_every_lockgate_command_it_gives_exists() -> None:
    commands = _commands()
    assert "lockgate db upgrade" in commands and "lockgate db check" in commands
    for command in commands:
        argv = command.split()[1:]
        argv = ["4" if a == "N" else a for a in argv]  # --workers N
        assert cli_problem(argv) is None, command


def test_the_state_example_loads(tmp_path: Path) -> None:
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", TEXT, flags=re.S) if "state:" in b)
    data = yaml.safe_load(block)
    data["master_key_file"] = str(tmp_path / "master.key")
    cfg = parse_config(data, "<deployment.md>")
    pg = cfg.state.postgresql
    assert cfg.state.backend == "postgresql" and pg is not None
    assert (pg.pool_size, pg.max_staleness, pg.catch_up_interval) == (8, 30, 1)
    assert pg.migrate_on_start is True and pg.replica_id is None


def test_the_recipes_it_names_exist() -> None:
    for path in re.findall(r"`(deploy/[\w./-]+)`", TEXT):
        assert (REPO / path).exists(), path
