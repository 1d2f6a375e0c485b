"""The ``lockgate`` Airflow plugin registers once per Airflow process.

Airflow loads ``airflow.plugins`` entry points from every distribution on ``sys.path``. A
second copy of Lockgate's metadata there (the ``src/lockgate.egg-info`` a source install
leaves beside the package) made every Airflow process log "Plugin 'lockgate' already
registered, skipping" and list the duplicate as a plugin import error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("airflow.plugins_manager")

SRC = Path(__file__).resolve().parents[2] / "src"
LOAD = """
from airflow import plugins_manager
plugins, errors = plugins_manager._get_plugins()
print("PLUGINS", sorted(p.name for p in plugins if p.name == "lockgate"))
print("ERRORS", sorted(k for k in errors if "lockgate" in k))
"""


def test_an_airflow_process_registers_the_plugin_once(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=180
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    leftover = [p.name for p in SRC.glob("*.egg-info")]
    assert "already registered" not in output, (
        f"a second copy of Lockgate's metadata is on sys.path: {leftover or 'see sys.path'}; "
        "the set-up removes src/lockgate.egg-info after pip install -e (Makefile)"
    )
    assert "PLUGINS ['lockgate']" in proc.stdout, output[-3000:]
    assert "ERRORS []" in proc.stdout, output[-3000:]
