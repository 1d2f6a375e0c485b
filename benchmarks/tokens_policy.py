"""Tokens minted/s, tokens verified/s and policy decisions/s, each against a same-run baseline.

- mint: TokenIssuer.mint vs a bare Ed25519 signature over the same bytes (the floor).
- verify: TokenVerifier.verify from its cache and cold (a new token each time) vs a bare
  Ed25519 verification.
- policy: PolicySet.decide (cached hot path) and decide_uncached over 50 rules vs a naive
  loop calling fnmatch on every rule for every request.
"""

from __future__ import annotations

import fnmatch
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lockgate.identity import KeyStore, RevocationStore, TaskIdentity, TokenIssuer, TokenVerifier
from lockgate.policy import Request, parse_policy_texts


def rate(fn: Callable[[int], None], seconds: float = 1.5) -> float:
    """Calls per second of fn(i), measured for about ``seconds``."""
    n, start = 0, time.perf_counter()
    while True:
        for _ in range(200):
            fn(n)
            n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def bench_tokens() -> list[tuple[str, float, float]]:
    with tempfile.TemporaryDirectory() as d:
        keys = KeyStore(Path(d))
        revocations = RevocationStore(Path(d) / "revocations.db")
        issuer = TokenIssuer(keys, "https://lockgate.bench")
        verifier = TokenVerifier(keys, revocations, "https://lockgate.bench")
        ident = TaskIdentity("prod", "finance_daily", "load", "manual__1", 1, -1)
        raw = Ed25519PrivateKey.generate()
        pub = raw.public_key()
        payload = b"x" * 300
        sig = raw.sign(payload)
        sign_rate = rate(lambda i: raw.sign(payload))
        verify_rate = rate(lambda i: pub.verify(sig, payload))
        mint_rate = rate(lambda i: issuer.mint(ident, "orders-api", 900))
        token, _ = issuer.mint(ident, "orders-api", 900)
        cached_rate = rate(lambda i: verifier.verify(token, "orders-api"))
        fresh = [issuer.mint(ident, "orders-api", 900)[0] for _ in range(20000)]
        cold_rate = rate(lambda i: verifier.verify(fresh[i % len(fresh)], "orders-api"), 0.5)
        revocations.close()
    return [
        ("tokens minted/s (vs bare Ed25519 sign)", mint_rate, sign_rate),
        ("tokens verified/s, cached (vs bare Ed25519 verify)", cached_rate, verify_rate),
        ("tokens verified/s, cold (vs bare Ed25519 verify)", cold_rate, verify_rate),
    ]


def _policy_text(n: int) -> str:
    rules = []
    for i in range(n):
        rules.append(
            f"""  - id: team{i}-read
    effect: allow
    principals: ["airflow:prod/team{i}_*/*"]
    actions: [read]
    resources: ["api-{i % 7}"]
    objects: ["/data/{i}/**"]"""
        )
    rules.append(
        """  - id: no-admin
    effect: deny
    principals: ["*"]
    actions: [admin]
    resources: ["*"]"""
    )
    return "rules:\n" + "\n".join(rules) + "\n"


def bench_policy() -> list[tuple[str, float, float]]:
    text = _policy_text(50)
    ps = parse_policy_texts([("bench.yaml", text)], None)
    reqs = [
        Request(f"airflow:prod/team{i % 60}_daily/t", "read", f"api-{i % 7}", f"/data/{i % 60}/x")
        for i in range(64)
    ]
    naive_rules = [(f"airflow:prod/team{i}_*/*", f"api-{i % 7}", f"/data/{i}/*") for i in range(50)]

    def naive(i: int) -> bool:
        r = reqs[i % 64]
        return any(
            fnmatch.fnmatchcase(r.principal, p)
            and fnmatch.fnmatchcase(r.resource, res)
            and fnmatch.fnmatchcase(r.object, o)
            for p, res, o in naive_rules
        )

    naive_rate = rate(naive)
    cached = rate(lambda i: ps.decide(reqs[i % 64]))
    uncached = rate(lambda i: ps.decide_uncached(reqs[i % 64]))
    return [
        ("policy decisions/s, cached (vs naive fnmatch loop)", cached, naive_rate),
        ("policy decisions/s, uncached (vs naive fnmatch loop)", uncached, naive_rate),
    ]


def main() -> list[tuple[str, float, float]]:
    rows = bench_tokens() + bench_policy()
    for name, value, base in rows:
        print(f"{name:55} {value:12,.0f}/s  baseline {base:12,.0f}/s  ratio {value / base:6.2f}")
    return rows


if __name__ == "__main__":
    main()
