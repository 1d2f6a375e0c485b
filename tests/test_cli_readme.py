"""The README's "Using it" commands work as written, and ``lockgate init`` says where its
starter resource forwards (nothing listens at the demo's port unless the demo runs)."""

from __future__ import annotations

import io
import shlex
from pathlib import Path

import pytest
import yaml

from lockgate.cli import DEMO_UPSTREAM, build_parser, cmd_serve, main

README = Path(__file__).resolve().parents[1] / "README.md"


def _using_it_commands() -> list[list[str]]:
    section = README.read_text(encoding="utf-8").split("\n## Using it\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if line.startswith("lockgate "):
            commands.append(shlex.split(line.split("  #", 1)[0]))
    return commands


def _upstream(config: Path) -> str:
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    return str(data["resources"][0]["upstream"])


def test_the_using_it_commands_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    commands = _using_it_commands()
    assert [c[1] for c in commands] == ["init", "creds", "config", "serve"]
    for argv in commands:
        args = [a.replace("/etc/lockgate", str(tmp_path / "gw")) for a in argv[1:]]
        if args[0] == "serve":  # runs until stopped: check that it parses to the config
            parsed = build_parser().parse_args(args)
            assert parsed.fn is cmd_serve and parsed.config == str(tmp_path / "gw/lockgate.yaml")
            continue
        monkeypatch.setattr("sys.stdin", io.StringIO("the-upstream-secret\n"))
        assert main(args) == 0, capsys.readouterr().err
    assert _upstream(tmp_path / "gw" / "lockgate.yaml") == "https://orders.internal"
    assert "the-upstream-secret" not in capsys.readouterr().out


def test_init_says_where_the_starter_resource_forwards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert _upstream(tmp_path / "a" / "lockgate.yaml") == DEMO_UPSTREAM
    assert f"orders-api forwards to {DEMO_UPSTREAM}, the demo orders API" in out
    assert "answer 502" in out and "--upstream URL" in out
    assert f"lockgate serve -c {tmp_path / 'a'}/lockgate.yaml" in out

    url = "https://orders.internal:8443/api/v1"
    assert main(["init", str(tmp_path / "b"), "--upstream", url, "--no-tls"]) == 0
    out = capsys.readouterr().out
    assert _upstream(tmp_path / "b" / "lockgate.yaml") == url
    assert f"orders-api forwards to {url} with routes for /orders paths" in out
    assert "502" not in out


@pytest.mark.parametrize(
    "url", ["ftp://orders.internal", "orders.internal", "https://a b", "https://x/#frag", ""]
)
def test_init_refuses_an_upstream_that_is_not_an_http_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    assert main(["init", str(tmp_path / "gw"), "--upstream", url]) == 2
    assert "--upstream must be an http:// or https:// URL" in capsys.readouterr().err
    assert not (tmp_path / "gw").exists()
