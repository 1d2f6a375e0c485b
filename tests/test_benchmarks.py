"""The benchmark harness judges the fast data path's targets the way the issue states them."""

from __future__ import annotations

from benchmarks._common import HTTP_P99_MS, HTTP_VS_NGINX, judge
from benchmarks.http_proxy import _figures


def test_judge_says_pass_miss_or_not_measured() -> None:
    assert judge("vs nginx", 0.5, HTTP_VS_NGINX, at_least=True, unit="x").endswith("PASS")
    assert judge("vs nginx", 0.49, HTTP_VS_NGINX, at_least=True, unit="x").endswith("MISS")
    assert judge("p99", 2.0, HTTP_P99_MS, at_least=False, unit=" ms").endswith("PASS")
    assert judge("p99", 2.1, HTTP_P99_MS, at_least=False, unit=" ms").endswith("MISS")
    assert judge("p99", None, HTTP_P99_MS, at_least=False, unit=" ms").endswith("?")


def test_http_figures_are_ratios_at_saturation_and_latency_at_moderate_load() -> None:
    direct = {"rps": 100.0, "p50_ms": 0.05, "p99_ms": 1.0}
    nginx = {"rps": 50.0}
    lockgate = {"rps": 25.0}
    moderate = {"p50_ms": 0.25, "p99_ms": 3.0}
    f = _figures(lockgate, moderate, direct, nginx, direct)
    assert f["vs_direct"] == 0.25 and f["vs_nginx"] == 0.5
    assert f["added_p50_ms"] == 0.2 and f["added_p99_ms"] == 2.0 and f["p99_ms"] == 3.0
    assert _figures(lockgate, None, direct, None, direct)["vs_nginx"] is None
