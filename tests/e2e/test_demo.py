"""The README's first command: `lockgate demo` (what `make demo` runs) works as written and
shows all five seed systems, each with a granted DAG and a refused one, in 100 columns."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lockgate.demo.run import EXPECTED, SYSTEMS

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
    lines = proc.stdout.splitlines()
    assert [x for x in lines if len(x) > 100] == []
    assert "[BAD]" not in out and out.count("[ok ]") == len(EXPECTED)
    for system, _, dags in SYSTEMS:
        assert any(line.strip().startswith(system + " (") for line in lines), system
        assert set(dags.values()) == {"failed", "success"}, system
        for dag_id, want in dags.items():
            at = next(i for i, x in enumerate(lines) if re.match(rf"  \[ok \] {dag_id} ", x))
            assert f" {want} " in lines[at]
            if want == "failed":  # the refusal is printed right under the DAG's line
                why = lines[at + 1].strip()
                assert why.startswith("why: Lockgate denied "), (dag_id, why)
                assert f"airflow:prod/{dag_id}/" in " ".join(lines[at + 1 : at + 5])
            assert any(x.startswith(f"  audit for {dag_id} run ") for x in lines), dag_id
    assert "audit chain: intact" in out
    assert re.search(r"demo took \d+ s", out)
    assert (tmp_path / "demo" / "airflow" / "airflow.db").exists()
