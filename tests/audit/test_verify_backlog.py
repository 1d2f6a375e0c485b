"""``lockgate audit verify`` reports written-ahead records still in journals, and chains the
journals of stopped processes with ``--replay``."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from lockgate.audit import AuditLog, AuditReader, AuditRecord
from lockgate.audit.journal import Journal, journal_dir
from lockgate.audit.record import sanitize, values
from lockgate.cli import main


def _admitted(i: int) -> AuditRecord:
    return AuditRecord(event="admitted", decision="allow", object=f"/o/{i}", run_id="gone")


def _gateway_dies(db: str, n: int) -> None:
    """A gateway process that wrote ``n`` records ahead and died before chaining them."""
    log = AuditLog(Path(db), batch_interval=60)
    for i in range(n):
        log.write_ahead(_admitted(i))
    os._exit(9)


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> Path:
    monkeypatch.delenv("LOCKGATE_MASTER_KEY", raising=False)
    monkeypatch.delenv("LOCKGATE_CONFIG", raising=False)
    assert main(["init", str(tmp_path / "gw")]) == 0
    capsys.readouterr()
    return tmp_path / "gw" / "lockgate.yaml"


def _verify(conf: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[int, str]:
    code = main(["-c", str(conf), "audit", "verify", *extra])
    return code, capsys.readouterr().out


def test_verify_reports_and_replays_a_stopped_gateways_journal(
    conf: Path, capsys: pytest.CaptureFixture
) -> None:
    db = conf.parent / "data" / "audit.db"
    p = multiprocessing.get_context("spawn").Process(target=_gateway_dies, args=(str(db), 7))
    p.start()
    p.join(60)
    assert p.exitcode == 9
    chained = len(AuditReader(db).search(run="gone"))
    assert chained == 0  # nothing was committed before the crash

    code, out = _verify(conf, capsys)
    assert code == 1
    assert "NOT CHAINED YET: 7 written-ahead records" in out and "--replay" in out
    assert AuditReader(db).search(run="gone") == []  # verify alone changes nothing

    code, out = _verify(conf, capsys, "--replay")
    assert code == 0 and "intact: 7 records" in out and "NOT CHAINED" not in out
    assert sorted(r.object for r in AuditReader(db).search(run="gone")) == [
        f"/o/{i}" for i in range(7)
    ]


def test_verify_names_a_running_processs_records_in_flight(
    conf: Path, capsys: pytest.CaptureFixture
) -> None:
    db = conf.parent / "data" / "audit.db"
    assert _verify(conf, capsys)[0] == 0
    live = Journal(journal_dir(db), "live-1")  # a live writer, its records not committed
    for i in range(1, 4):
        live.append(i, values(sanitize(_admitted(i), 0.0)))
    code, out = _verify(conf, capsys)
    assert code == 0
    assert "3 written-ahead records of 1 running process(es)" in out
    live.close(chained_up_to=None)  # it dies: now a stopped process's journal
    code, out = _verify(conf, capsys)
    assert code == 1 and "NOT CHAINED YET: 3" in out
