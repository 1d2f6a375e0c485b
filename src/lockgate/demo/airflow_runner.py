"""Run example DAGs with a real Airflow 3 (``dag.test()`` on SQLite) and report outcomes.

Run as ``python -m lockgate.demo.airflow_runner DAG_ID...`` in a process whose environment
already configures Airflow (AIRFLOW_HOME, the dags folder and the Lockgate secrets backend):
Airflow reads its configuration at import, so the caller sets it before this process starts.
Prints ``LOCKGATE-DAG <dag_id>`` before each DAG's own output and one JSON line per DAG run,
prefixed ``LOCKGATE-RESULT``, after all of it.
"""

from __future__ import annotations

import json
import os
import sys


def run(dag_ids: list[str]) -> list[dict[str, object]]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    results = []
    for dag_id in dag_ids:
        dag = bag.get_dag(dag_id)
        if dag is None:
            raise SystemExit(f"no DAG {dag_id!r} in {os.environ['AIRFLOW__CORE__DAGS_FOLDER']}")
        # Marks where this DAG's output starts, so a refusal is shown under its own DAG.
        print(f"LOCKGATE-DAG {dag_id}", flush=True)
        dr = dag.test()
        tis = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        results.append(
            {"dag_id": dag_id, "run_id": dr.run_id, "state": str(dr.state), "tasks": tis}
        )
    return results


def main() -> int:
    results = run(sys.argv[1:])
    for r in results:
        print("LOCKGATE-RESULT " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
