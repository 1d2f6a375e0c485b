from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from lockgate import metrics
from lockgate.errors import ConfigError
from lockgate.policy import PolicyStore, Request

P = "airflow:prod/finance_daily/load"
RULE = """rules:
  - id: {rid}
    effect: allow
    principals: ["airflow:prod/finance_*/*"]
    actions: [{action}]
    resources: [orders-api]
"""


def reloads(outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("lockgate_policy_reloads_total", {"outcome": outcome})
        or 0.0
    )


def write(p: Path, text: str) -> None:
    p.write_text(text)
    # Push the mtime into the past so only a real change (size/mtime/content) triggers reload.
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - 10_000_000_000))


def allowed(store: PolicyStore, action: str) -> bool:
    return store.current.decide(Request(P, action, "orders-api")).allowed


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    write(tmp_path / "finance.yaml", RULE.format(rid="finance-read", action="read"))
    return tmp_path


def test_loads_and_reports_unchanged(policy_dir: Path) -> None:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    assert store.last_error is None and allowed(store, "read")
    assert store.reload_if_changed() is False


def test_reload_on_change(policy_dir: Path) -> None:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    before = store.current
    ok = reloads("ok")
    write(policy_dir / "finance.yaml", RULE.format(rid="finance-write", action="write"))
    assert store.reload_if_changed() is True
    assert store.current is not before
    assert allowed(store, "write") and not allowed(store, "read")
    assert reloads("ok") == ok + 1
    assert store.reload_if_changed() is False


def test_same_size_edit_within_one_mtime_tick_is_seen(tmp_path: Path) -> None:
    # Coarse filesystem timestamps: a same-size rewrite may keep the mtime. Recent mtimes are
    # never trusted alone, so the content hash catches it.
    p = tmp_path / "finance.yaml"
    p.write_text(RULE.format(rid="finance-read", action="read"))
    store = PolicyStore(lambda: [p], {"orders-api"})
    st = p.stat()
    p.write_text(RULE.format(rid="finance-reads", action="run"))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    assert store.reload_if_changed() is True
    assert allowed(store, "run")


def test_touch_without_content_change_is_not_a_reload(policy_dir: Path) -> None:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    before = store.current
    os.utime(policy_dir / "finance.yaml", None)
    assert store.reload_if_changed() is False and store.current is before


def test_new_and_removed_files_count_as_changes(policy_dir: Path) -> None:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    write(policy_dir / "ops.yaml", RULE.format(rid="ops-run", action="run"))
    assert store.reload_if_changed() is True and allowed(store, "run")
    (policy_dir / "ops.yaml").unlink()
    assert store.reload_if_changed() is True and not allowed(store, "run")


def test_broken_file_keeps_last_good_then_recovers(
    policy_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    good = store.current
    errors = reloads("error")
    write(policy_dir / "finance.yaml", RULE.format(rid="finance-read", action="delete"))
    with caplog.at_level("ERROR", logger="lockgate.policy"):
        assert store.reload_if_changed() is False
    assert store.current is good and allowed(store, "read")
    assert store.last_error is not None
    assert "finance.yaml:5: rules[0].actions[0] (rule finance-read)" in store.last_error
    assert reloads("error") == errors + 1
    assert any("keeping the last good policy" in r.getMessage() for r in caplog.records)
    # Checking again without a change neither re-logs nor re-counts.
    assert store.reload_if_changed() is False
    assert reloads("error") == errors + 1
    # Fix it.
    write(policy_dir / "finance.yaml", RULE.format(rid="finance-write", action="write"))
    assert store.reload_if_changed() is True
    assert store.last_error is None and allowed(store, "write")


def test_unknown_resource_is_a_reload_error(policy_dir: Path) -> None:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    write(
        policy_dir / "hr.yaml", RULE.format(rid="hr", action="read").replace("orders-api", "hr-api")
    )
    assert store.reload_if_changed() is False
    assert "hr.yaml:6: rules[0].resources[0] (rule hr): unknown resource 'hr-api'" in (
        store.last_error or ""
    )


def test_broken_at_start(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_text("rules: [")
    store = PolicyStore(lambda: [tmp_path / "x.yaml"])
    assert len(store.current) == 0 and "x.yaml" in (store.last_error or "")
    assert not allowed(store, "read")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PolicyStore(lambda: [tmp_path / "x.yaml"], raise_on_error=True)


def test_vanished_file_keeps_last_good(policy_dir: Path) -> None:
    path = policy_dir / "finance.yaml"
    store = PolicyStore(lambda: [path], {"orders-api"})
    path.unlink()
    assert store.reload_if_changed() is False
    assert allowed(store, "read") and "finance.yaml" in (store.last_error or "")


async def test_watch_picks_up_changes(policy_dir: Path) -> None:
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    task = asyncio.create_task(store.watch(interval=0.01))
    try:
        write(policy_dir / "finance.yaml", RULE.format(rid="finance-write", action="write"))
        for _ in range(200):
            if allowed(store, "write"):
                break
            await asyncio.sleep(0.01)
        assert allowed(store, "write")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_follows_a_catalog_changed_live(policy_dir: Path) -> None:
    """A policy file naming a resource added to the catalog live is accepted at once (its
    bytes are unchanged); one naming a resource removed live is refused, the last good set
    staying, like any broken file."""
    hr = RULE.format(rid="hr", action="read").replace("orders-api", "hr-api")
    write(policy_dir / "hr.yaml", hr)
    store = PolicyStore(lambda: sorted(policy_dir.glob("*.yaml")), {"orders-api"})
    assert "unknown resource 'hr-api'" in (store.last_error or "")
    assert store.reload_if_changed() is False  # same files, same catalog: same verdict

    assert store.update_known_resources(["orders-api", "hr-api"]) is True
    assert store.last_error is None
    assert store.current.decide(Request(P, "read", "hr-api")).allowed
    assert store.reload_if_changed() is False  # settled again

    loaded = store.current
    assert store.update_known_resources(["orders-api"]) is False
    assert "unknown resource 'hr-api'" in (store.last_error or "")
    assert store.current is loaded and allowed(store, "read")
