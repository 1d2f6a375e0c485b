"""The writers catch their mirrors up with the chain when they open it."""

from __future__ import annotations

import json
from pathlib import Path

from lockgate.audit import AuditRecord
from lockgate.audit import ocsf as ocsf_map
from lockgate.audit.log import AuditLog
from lockgate.audit.remote import RemoteAuditLog, WriterProcess


def _cut(paths: tuple[Path, Path], keep: int) -> None:
    for path in paths:  # killed after the commit, half way through the mirror write
        lines = path.read_bytes().split(b"\n")
        path.write_bytes(b"\n".join(lines[:keep]) + b"\n" + lines[keep][:30])


def test_the_thread_writer_catches_its_mirrors_up_at_open(tmp_path: Path) -> None:
    paths = (tmp_path / "a.jsonl", tmp_path / "a.ocsf")
    log = AuditLog(tmp_path / "audit.db", paths[0], ocsf_path=paths[1])
    for i in range(4):
        log.emit(AuditRecord("denied", resource="x", action="read", object=f"/{i}"))
    assert log.flush(10)
    log.close()
    _cut(paths, 2)
    log = AuditLog(tmp_path / "audit.db", paths[0], ocsf_path=paths[1])
    log.emit(AuditRecord("denied", resource="x", action="read", object="/4"))
    assert log.flush(10)
    log.close()
    assert [json.loads(x)["seq"] for x in paths[0].read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert ocsf_map.verify_export(paths[1].read_text().splitlines()).ok


def test_the_writer_process_catches_its_mirrors_up_at_start(tmp_path: Path) -> None:
    paths = (tmp_path / "a.jsonl", tmp_path / "a.ocsf")
    db = tmp_path / "audit.db"
    for round_ in range(2):
        writer = WriterProcess(db, paths[0], ocsf_path=paths[1])
        writer.start()
        log = RemoteAuditLog(db, socket_path=writer.socket_path)
        try:
            for i in range(3):
                log.emit(AuditRecord("denied", resource="x", action="read", object=f"/{i}"))
            assert log.flush(10)
        finally:
            log.close()
            writer.stop()
        if round_ == 0:
            _cut(paths, 1)
    assert len(paths[0].read_text().splitlines()) == 6
    assert ocsf_map.verify_export(paths[1].read_text().splitlines()).ok
