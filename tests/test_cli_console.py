"""``lockgate console link``: prints a one-time admin link made in the gateway's own state,
audited without the link."""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from lockgate.cli_console import add_console_commands
from lockgate.config import load_config
from lockgate.console.links import link_subject
from lockgate.console.sessions import ConsoleStore
from lockgate.errors import LockgateError
from lockgate.state import State


def _run(config: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config")
    add_console_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["-c", str(config), "console", "link", *argv])
    result: int = args.fn(args)
    return result


def _config(tmp_path: Path, extra: str = "", name: str = "lockgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "listeners:\n  control: {host: 0.0.0.0, port: 9443}\n" + extra
    )
    return path


def test_link_prints_a_usable_link_and_audits_its_subject(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert _run(config, "--ttl", "120") == 0
    out, err = capsys.readouterr()
    url = urlsplit(out.strip())
    assert (url.scheme, url.netloc, url.path) == ("http", "localhost:9443", "/console/login/link")
    token = parse_qs(url.query)["token"][0]
    assert "120s" in err
    st = State(load_config(config))
    try:
        store = ConsoleStore(st.database("console"))
        assert store.link_state(token) == "usable"  # the serving gateway reads this database
        with st.audit_reader() as reader:
            rows = [r for r in reader.tail(5) if r.event == "console_link_created"]
        assert len(rows) == 1
        assert rows[0].object == link_subject(token)
        assert rows[0].detail == {"ttl": 120.0}
        assert token not in repr(rows[0].to_dict())
    finally:
        st.close()


def test_link_uses_public_url_and_refuses_a_console_turned_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, "console:\n  public_url: https://gate.example.com/console/\n")
    assert _run(config) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("https://gate.example.com/console/login/link?token=")
    off = _config(tmp_path, "console:\n  enabled: false\n", name="off.yaml")
    with pytest.raises(LockgateError, match=r"console\.enabled"):
        _run(off)
    with pytest.raises(LockgateError, match="--ttl"):
        _run(config, "--ttl", "0")
