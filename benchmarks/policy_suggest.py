"""What ``lockgate policy suggest`` and ``policy unused`` cost on a large audit trail.

Usage::

    .venv/bin/python -m benchmarks.policy_suggest [--records 1000000]

Builds a temporary ``audit.db`` of ``--records`` valid rows by direct inserts (the schema the
writer creates; the hash chain is not computed, a read benchmark needs no verifiable chain):
nine in ten of one DAG (8 tasks, ids, uuids and dates in the paths, some denied asks), the
rest of other DAGs. Then runs each command's code path (the CLI's streamed reader, then the
library) in a fresh child process and reports its wall seconds and peak RSS: the rows
stream, so the peak stays near the interpreter's own size whatever the trail's length.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lockgate.audit import chain

TASKS = [f"task_{n}" for n in range(8)]
POLICY = {
    "rules": [
        {"id": "finance-all", "effect": "allow", "principals": ["airflow:prod/finance/*"],
         "actions": ["read", "write"], "resources": ["*"]},
        {"id": "other-read", "effect": "allow", "principals": ["airflow:prod/*"],
         "actions": ["read"], "resources": ["*"]},
        {"id": "finance-admin", "effect": "allow", "principals": ["airflow:prod/finance/*"],
         "actions": ["admin"], "resources": ["*"]},
    ]
}  # fmt: skip


def _rows(n: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    rnd = random.Random(seed)
    uuids = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(200)]
    t0 = time.time() - 20 * 86400
    for seq in range(1, n + 1):
        ts = t0 + seq * (19 * 86400 / n)
        dag = "finance" if rnd.random() < 0.9 else f"dag_{rnd.randrange(20)}"
        task = rnd.choice(TASKS)
        kind = rnd.random()
        if kind < 0.5:
            resource_, action, obj = "orders-api", "read", f"/orders/{rnd.randrange(5000)}"
        elif kind < 0.7:
            resource_, action, obj = "orders-api", "write", f"/customers/{rnd.choice(uuids)}"
        elif kind < 0.9:
            day = f"2026-11-{rnd.randrange(1, 31):02d}"
            resource_, action, obj = "lake", "read", f"/exports/{task}/{day}/part.csv"
        else:
            resource_, action, obj = "warehouse", "read", f"sales.t{rnd.randrange(30)}"
        event, decision = "admitted", "allow"
        rule: str | None = "finance-all"
        if rnd.random() < 0.05:
            event, decision, rule, obj = "denied", "deny", None, f"/admin/{rnd.randrange(9)}"
        yield (
            seq, ts, event, "prod", dag, task, f"run-{seq // 50_000}", 1, -1,
            f"airflow:prod/{dag}/{task}", resource_, action, obj, decision, rule,
            None, 200, 1.0, 10, 100, "jti", "{}", "0" * 64, "0" * 64,
        )  # fmt: skip


def build(directory: Path, records: int) -> Path:
    """``directory/lockgate.yaml`` over a data dir holding ``records`` audit rows."""
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    conn = chain.connect(data / "audit.db")
    marks = ", ".join("?" * 24)
    rows = _rows(records)
    conn.execute("BEGIN")
    while batch := [r for _, r in zip(range(50_000), rows, strict=False)]:
        conn.executemany(f"INSERT INTO audit VALUES ({marks})", batch)  # noqa: S608 - marks only
    conn.execute("COMMIT")
    conn.close()
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "all.yaml").write_text(yaml.safe_dump(POLICY))
    config = directory / "lockgate.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "policies": ["policies/*.yaml"]}))
    return config


def measure(config: Path, what: str) -> dict[str, Any]:
    """In this (fresh) process: run ``what`` once; wall seconds and peak RSS (MiB)."""
    from lockgate.cli_policy_usage import audit_rows
    from lockgate.config import load_config
    from lockgate.policy import load_policy_files
    from lockgate.policy.suggest import suggest
    from lockgate.policy.usage import rule_usage

    cfg = load_config(config)
    start = time.perf_counter()
    if what == "suggest":
        found = suggest(audit_rows(cfg, dag="finance", since=0.0), "finance")
        text = found.policy_yaml() + found.tests_yaml()
        out: dict[str, Any] = {"rows": found.evidence.rows, "rules": len(found.rules)}
        out["bytes"] = len(text)
    else:
        policy_set = load_policy_files(cfg.policy_files())
        uses = rule_usage(policy_set, audit_rows(cfg, dag=None, since=0.0))
        out = {"rules": len(uses), "never_used": sum(not u.used for u in uses)}
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--measure", nargs=2, metavar=("CONFIG", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        config = build(Path(tmp), args.records)
        print(f"policy suggest / unused on {args.records:,} audit records "
              f"(built in {time.perf_counter() - start:.1f} s)")  # fmt: skip
        for what in ("suggest", "unused"):
            child = [sys.executable, "-m", "benchmarks.policy_suggest", "--measure"]
            done = subprocess.run([*child, str(config), what], capture_output=True, check=True)
            print(f"  {what}: {json.loads(done.stdout)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
