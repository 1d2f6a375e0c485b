"""Run every Lockgate benchmark and print ratios measured in the same run.

    make bench        # or: python -m benchmarks.run

Numbers from one 2-core machine are noisy; compare ratios, not absolute values. Every
benchmark runs even when an earlier one reported errors; the exit code is non-zero if any
of them did.
"""

from __future__ import annotations

import importlib
import sys

# (title, module, arguments for main(); None means main() takes none)
BENCHMARKS: list[tuple[str, str, list[str] | None]] = [
    ("tokens and policy", "benchmarks.tokens_policy", None),
    ("HTTP data path: direct vs Lockgate vs nginx", "benchmarks.http_proxy", []),
    ("Databricks runs/get: Lockgate vs direct", "benchmarks.databricks", []),
    ("Cosmos DB point reads: Lockgate vs direct", "benchmarks.cosmos", []),
    ("CQL data path: Lockgate vs direct", "benchmarks.cql", []),
    ("PostgreSQL data path: pgbench direct vs PgBouncer vs Lockgate", "benchmarks.postgres", []),
    ("audit per allowed request: emit vs write-ahead, fsync", "benchmarks.audit", []),
    ("three replicas on one PostgreSQL: propagation and failures", "benchmarks.ha", []),
    ("a rate quota shared by 2 worker processes: achieved vs configured", "benchmarks.quotas", []),
    ("policy suggest / unused on 1M audit records", "benchmarks.policy_suggest", []),
    ("the web console's pages on 100k audit records vs an empty trail", "benchmarks.console", []),
]


def main() -> int:
    failed: list[str] = []
    for title, module, argv in BENCHMARKS:
        print(f"\n== {title} ==", flush=True)
        try:
            bench = importlib.import_module(module)
            result = bench.main() if argv is None else bench.main(argv)
        except Exception as exc:  # report and go on: one broken benchmark hides no others
            print(f"{module} failed: {type(exc).__name__}: {exc}", flush=True)
            failed.append(module)
            continue
        if isinstance(result, int) and result != 0:
            failed.append(module)
    if failed:
        print(f"\nbenchmarks with errors: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
