"""Run every Lockgate benchmark and print ratios measured in the same run.

    make bench        # or: python -m benchmarks.run

Numbers from one 2-core machine are noisy; compare ratios, not absolute values.
"""

from __future__ import annotations

import importlib
import sys


def main() -> int:
    print("== tokens and policy ==", flush=True)
    importlib.import_module("benchmarks.tokens_policy").main()
    print("\n== HTTP data path ==", flush=True)
    try:
        http = importlib.import_module("benchmarks.http_proxy")
    except ModuleNotFoundError as exc:
        print(f"HTTP benchmark unavailable: {exc}")
        return 1
    code = int(http.main() or 0)
    print("\n== Databricks runs/get: Lockgate vs direct ==", flush=True)
    try:
        dbx = importlib.import_module("benchmarks.databricks")
    except ModuleNotFoundError as exc:
        print(f"Databricks benchmark unavailable: {exc}")
        return 1
    code = code or int(dbx.main([]) or 0)
    print("\n== Cosmos DB point reads: Lockgate vs direct ==", flush=True)
    try:
        cosmos = importlib.import_module("benchmarks.cosmos")
    except ModuleNotFoundError as exc:
        print(f"Cosmos DB benchmark unavailable: {exc}")
        return 1
    code = code or int(cosmos.main([]) or 0)
    print("\n== CQL data path: Lockgate vs direct ==", flush=True)
    try:
        cql = importlib.import_module("benchmarks.cql")
    except ModuleNotFoundError as exc:
        print(f"CQL benchmark unavailable: {exc}")
        return 1
    return code or int(cql.main([]) or 0)


if __name__ == "__main__":
    sys.exit(main())
