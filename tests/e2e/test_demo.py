"""The README's first command: `lockgate demo` (what `make demo` runs) works as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def test_lockgate_demo_with_a_relative_dir_runs_every_dag_as_policy_says(tmp_path: Path) -> None:
    lockgate = Path(sys.executable).with_name("lockgate")
    proc = subprocess.run(
        [str(lockgate), "demo", "--dir", "demo"],  # relative, exactly like the Makefile
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("[ok ]") == 4 and "[BAD]" not in out
    assert "audit chain: intact" in out
    assert (tmp_path / "demo" / "airflow" / "airflow.db").exists()
