"""A real local stack for end-to-end tests: demo upstream + gateway + a migrated Airflow 3.

Session-scoped: ``airflow db migrate`` runs once (about 10 s). Each DAG batch runs in its own
Airflow process (Airflow reads its configuration at import), through the real secrets
backend, to the real gateway on 127.0.0.1.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from lockgate.demo.stack import LocalStack, airflow_bin

pytest.importorskip("airflow.providers.http", reason="Airflow 3 with the HTTP provider")


@pytest.fixture(scope="session")
def airflow_home(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow")
    subprocess.run(
        [airflow_bin(), "db", "migrate"],
        env=stack.airflow_env(home),
        check=True,
        capture_output=True,
        timeout=300,
    )
    return home
