"""The secretless demo's scan verdict cannot claim more than it saw: a secret found fails the
demo (named, never shown), and a task environment that was never written leaves the scan
incomplete, which fails it too. On a stand-in for the stack: only what the scan reads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from lockgate.demo.report import WIDTH
from lockgate.demo.run_secretless import report_scan
from lockgate.demo.secret_scan import SecretScan
from lockgate.demo.secretless import SecretlessStack

WITHDRAWN = "s3cr3t-withdrawn-from-entra-0123456789"


class ScannedStack:
    """The files and rules ``report_scan`` reads of a :class:`SecretlessStack`."""

    def __init__(self, root: Path) -> None:
        self.workdir = root
        self.worker = root / "worker"
        self.worker_tmp = self.worker / "tmp"
        self.worker_tmp.mkdir(parents=True)
        (root / "policies").mkdir()
        self.config_path = root / "lockgate.yaml"
        self.config_path.write_text("deployments: []\n")
        self.config = SimpleNamespace(data_dir=root / "data")
        self.config.data_dir.mkdir()

    def secret_scan(self, *, gateway: bool) -> SecretScan:
        return SecretScan(known={"Entra client secret #0": WITHDRAWN})

    def dump_environment(self, env: dict[str, str]) -> None:
        (self.worker_tmp / "task-environment.json").write_text(json.dumps(env))


def _verdict(stack: ScannedStack, capsys: pytest.CaptureFixture[str]) -> tuple[bool, str]:
    clean = report_scan(cast(SecretlessStack, cast(Any, stack)), "task log line\n")
    out = capsys.readouterr().out
    assert [x for x in out.splitlines() if len(x) > WIDTH] == []
    return clean, out


def test_nothing_found_is_said_only_when_everything_was_scanned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = ScannedStack(tmp_path)
    stack.dump_environment({"HOME": "/home/worker"})
    clean, out = _verdict(stack, capsys)
    assert clean and out.rstrip().endswith("verdict: nothing found")
    assert "a task's environment     1 variables" in out


def test_a_secret_found_fails_the_demo_and_is_named_not_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = ScannedStack(tmp_path)
    stack.dump_environment({"HOME": "/home/worker"})
    (stack.worker_tmp / "cache.txt").write_text(f"token cache {WITHDRAWN}\n")
    (stack.config.data_dir / "left.txt").write_text("client_secret: another-one\n")
    clean, out = _verdict(stack, capsys)
    # Long paths are wrapped at 100 columns, possibly inside a word: compare without spaces.
    said = "".join(out.split())
    assert not clean and "verdict: 2 found" in out
    assert "cache.txt:knownsecretEntraclientsecret#0" in said
    assert "left.txt:aclientsecretsetting" in said
    assert WITHDRAWN not in out


def test_an_environment_never_written_leaves_the_scan_incomplete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean, out = _verdict(ScannedStack(tmp_path), capsys)
    assert not clean
    assert "not scanned: a task's environment (secretless_env_dump failed)" in out
    assert "verdict: nothing found, but the scan is incomplete" in out
