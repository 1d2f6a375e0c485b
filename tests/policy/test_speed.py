"""Hot-path throughput: ~50 rules, cached decisions must clear 200k/s with a wide margin."""

from __future__ import annotations

import time

from lockgate.policy import Request, parse_policies


def test_cached_decisions_are_fast() -> None:
    rules = [
        {
            "id": f"r{i}",
            "effect": "deny" if i % 5 == 0 else "allow",
            "principals": [f"airflow:prod/team{i}_*/*"],
            "actions": ["read", "write"] if i % 2 else ["read"],
            "resources": [f"res-{i % 10}"],
            "objects": [f"/t{i}/*", "/common/**"],
        }
        for i in range(48)
    ]
    rules.append(
        {
            "id": "fin",
            "effect": "allow",
            "principals": ["airflow:prod/finance_*/*"],
            "actions": ["read"],
            "resources": ["orders-api"],
            "objects": ["/orders/**"],
        }
    )
    ps = parse_policies([("p.yaml", {"rules": rules})])
    reqs = [
        Request(f"airflow:prod/finance_d{i % 20}/t", "read", "orders-api", f"/orders/{i % 500}")
        for i in range(5000)
    ]
    assert all(ps.decide(r).allowed for r in reqs)  # warm the cache, check the answers
    n = 0
    start = time.perf_counter()
    for _ in range(10):
        for r in reqs:
            ps.decide(r)
        n += len(reqs)
    rate = n / (time.perf_counter() - start)
    assert rate > 200_000, f"{rate:.0f} decisions/s"
