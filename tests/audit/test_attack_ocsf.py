"""Attacks on the OCSF export: what a request can put in an event, editing an exported line,
and the export failing to be written.

Every field an attacker shapes (object path, CQL identifier, run id, reason text) must stay
one line of valid OCSF of its class; editing any exported line, mapped fields included (what
a SIEM shows), must be found by the documented check; a mirror that cannot be written leaves
no half line and makes the audit log refuse (fail closed).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockgate.audit import AuditRecord
from lockgate.audit import ocsf as ocsf_map
from lockgate.audit.log import AuditLog
from lockgate.audit.sinks import JsonlSink, Mirrors, OcsfSink
from lockgate.errors import AuditUnavailable
from tests.audit.test_ocsf import DATASTORES, WHO, _records, _rows, _valid, _verify_from_export

EVIL = 'x"}\n{"class_uid":1}\r\n<script>\u2028\u0000 <!channel> \\ \ud800 é'


def _attacks() -> list[AuditRecord]:
    who = {**WHO, "run_id": f"manual__{EVIL}", "principal": f"airflow:prod/d/{EVIL}"}
    return [
        AuditRecord("denied", **who, resource="orders-api", action="write",
                    object=f"/orders/{EVIL}" + "y" * 200_000, decision="deny",
                    reason=f"no_rule {EVIL}", rule=EVIL, status=403),
        AuditRecord("denied", **who, resource="orders-cql", action="read",
                    object=f'ks."{EVIL}"', decision="deny",
                    detail={"statement": f'SELECT * FROM ks."{EVIL}"',  # noqa: S608
                            "nested": [EVIL, {}]}),
        AuditRecord("allowed", **who, resource="orders-cosmos", action="read",
                    object=EVIL, decision="allow",
                    detail={"operation": f"read_{EVIL}", "ref": EVIL}),
        AuditRecord("auth_failed", resource=EVIL, decision="deny", reason=EVIL),
        AuditRecord("token_issued", **who, resource="orders-api", decision="allow",
                    detail={"ttl": "900", "expires_at": float("inf")}),
        AuditRecord("denied", **who, resource="orders-api", action=EVIL, decision=EVIL,
                    status=2**70, latency_ms=float("nan")),  # type: ignore[arg-type]
        AuditRecord("mint_blocked", deployment=EVIL, object=EVIL),
    ]  # fmt: skip


def _export(tmp_path: Path, records: list[AuditRecord]) -> list[str]:
    path = tmp_path / "audit.ocsf"
    sink = OcsfSink(path, DATASTORES)
    sink.write(_rows(records))
    sink.close()
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def test_attack_fields_stay_one_valid_ocsf_line_each(tmp_path: Path) -> None:
    lines = _export(tmp_path, _attacks())
    assert len(lines) == len(_attacks())  # no line broken by a newline in a value
    for line in lines:
        ev = json.loads(line)
        _valid(ev)
        assert isinstance(ev["time"], int) and isinstance(ev["status_id"], int)
        assert not ocsf_map.altered_fields(ev)
    assert ocsf_map.verify_export(lines).ok


def _edit(line: str, change: Any) -> str:
    ev = json.loads(line)
    change(ev)
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False)


def _set(path: str, value: object) -> Any:
    def change(ev: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = ev
        for p in parents:
            node = node[p]
        node[last] = value

    return change


EDITS = {
    "who (mapped only)": _set("actor.user.name", "airflow:prod/someone_else/t"),
    "outcome (mapped only)": _set("status_id", 1),
    "disposition (mapped only)": _set("disposition_id", 1),
    "time (mapped only)": _set("time", 0),
    "object (mapped only)": _set("resources", []),
    "an added field": _set("observables", [{"name": "x", "type_id": 1, "value": "y"}]),
    "the row": _set("unmapped.lockgate.principal", "airflow:prod/someone_else/t"),
    "row and mapping together": lambda ev: (
        _set("unmapped.lockgate.reason", "allowed")(ev),
        _set("status_detail", "allowed")(ev),
    ),
}


@pytest.mark.parametrize("what", sorted(EDITS))
def test_attack_an_edited_exported_line_is_found(tmp_path: Path, what: str) -> None:
    lines = _export(tmp_path, [r for r, _, _ in _records()])
    assert ocsf_map.verify_export(lines).ok
    denied = next(i for i, x in enumerate(lines) if '"denied"' in x)
    lines[denied] = _edit(lines[denied], EDITS[what])
    check = ocsf_map.verify_export(lines)
    assert not check.ok and check.problems[0][0] == denied + 1, check.problems
    if "mapped only" in what:  # re-hashing the rows alone does not see it
        assert _verify_from_export([json.loads(x) for x in lines]) == len(lines)


def test_attack_dropped_or_reordered_lines_are_found(tmp_path: Path) -> None:
    lines = _export(tmp_path, [r for r, _, _ in _records()])
    assert not ocsf_map.verify_export(lines[:3] + lines[4:]).ok
    assert not ocsf_map.verify_export([lines[1], lines[0], *lines[2:]]).ok
    # a tail kept from the middle verifies from its first prev_hash
    first_prev = json.loads(lines[5])["unmapped"]["lockgate"]["prev_hash"]
    assert ocsf_map.verify_export(lines[5:], first_prev).ok


def test_attack_a_mirror_failing_mid_line_leaves_no_half_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _rows([AuditRecord("allowed", resource="x", action="read")] * 3)
    jsonl, ocsf = JsonlSink(tmp_path / "a.jsonl"), OcsfSink(tmp_path / "a.ocsf")
    both = Mirrors([jsonl, ocsf])
    both.write(rows[:1])
    real_write = os.write

    class DiskFull:  # the OCSF file takes half the batch, then the disk is full
        def __init__(self, fd: int) -> None:
            self.fd = fd

        def write(self, data: memoryview) -> int:
            real_write(self.fd, bytes(data[: len(data) // 2]))
            raise OSError(28, "No space left on device")

        def fileno(self) -> int:
            return self.fd

        def close(self) -> None:
            os.close(self.fd)

    fh = ocsf._open()
    monkeypatch.setattr(ocsf, "_fh", DiskFull(os.dup(fh.fileno())))
    fh.close()
    with pytest.raises(OSError):
        both.write(rows[1:])
    for path in (tmp_path / "a.jsonl", tmp_path / "a.ocsf"):
        text = path.read_text()
        assert text.endswith("\n") and len(text.splitlines()) == 1, path
    both.write(rows[1:])  # the retry writes each row once
    assert [len((tmp_path / n).read_text().splitlines()) for n in ("a.jsonl", "a.ocsf")] == [3, 3]
    assert ocsf_map.verify_export((tmp_path / "a.ocsf").read_text().splitlines()).ok


def test_attack_an_unwritable_ocsf_file_refuses_requests_until_it_is_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.ocsf"
    log = AuditLog(tmp_path / "audit.db", ocsf_path=path)
    try:
        log.emit(AuditRecord("allowed", resource="x", action="read"))
        assert log.flush(10)
        log.check_writable()
        # the disk under the export goes read-only: the open file refuses, a reopen too
        sink = log._sink
        assert isinstance(sink, OcsfSink) and sink._fh is not None
        path.rename(tmp_path / "aside")
        path.mkdir()
        sink._fh = os.fdopen(os.open(tmp_path / "aside", os.O_RDONLY), "rb", buffering=0)
        log.emit(AuditRecord("allowed", resource="x", action="read"))
        _eventually(lambda: _refuses(log))
        time.sleep(0.2)
        assert _refuses(log)  # still refusing while it cannot be written
        path.rmdir()
        (tmp_path / "aside").rename(path)
        _eventually(lambda: not _refuses(log))
        assert log.flush(10)
    finally:
        log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and ocsf_map.verify_export(lines).ok


def _refuses(log: AuditLog) -> bool:
    try:
        log.check_writable()
    except AuditUnavailable:
        return True
    return False


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_attack_a_line_cut_by_a_killed_writer_is_not_glued_to_the_next(tmp_path: Path) -> None:
    rows = _rows([AuditRecord("allowed", resource="x", action="read")] * 3)
    for sink_type, name in ((JsonlSink, "a.jsonl"), (OcsfSink, "a.ocsf")):
        path = tmp_path / name
        first = sink_type(path)
        first.write(rows[:1])
        first.close()
        whole = path.read_bytes()
        with path.open("ab") as fh:  # the process died half way through the second line
            fh.write(whole[: len(whole) // 2])
        after = sink_type(path)  # the restarted writer
        after.write(rows[2:])
        after.close()
        lines = path.read_text().splitlines()
        assert len(lines) == 2 and all(json.loads(x) for x in lines), name
    # the gap (row 2, in the chain, never mirrored) is what the check names
    check = ocsf_map.verify_export((tmp_path / "a.ocsf").read_text().splitlines())
    assert [n for n, _ in check.problems] == [2]


def test_attack_rows_a_killed_writer_never_mirrored_are_caught_up(tmp_path: Path) -> None:
    from lockgate.audit import chain
    from lockgate.audit.sinks import catch_up, open_mirrors

    jsonl, ocsf_path = tmp_path / "audit.jsonl", tmp_path / "audit.ocsf"
    log = AuditLog(tmp_path / "audit.db", jsonl, ocsf_path=ocsf_path)
    try:
        for i in range(5):
            log.emit(AuditRecord("denied", resource="x", action="read", object=f"/{i}"))
        assert log.flush(10)
    finally:
        log.close()
    # the writer was killed after committing rows 4 and 5, half way through mirroring 4
    for path in (jsonl, ocsf_path):
        lines = path.read_bytes().split(b"\n")
        path.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:40])
    conn = chain.connect(tmp_path / "audit.db")
    try:
        head = chain.read_head(conn)[0]
        mirrors = open_mirrors(jsonl, ocsf_path)
        assert mirrors is not None
        assert catch_up(mirrors, conn, head) == 2 * 2  # two rows, each file
        assert catch_up(mirrors, conn, head) == 0  # nothing twice
        stored = [r.to_dict() for r in chain.iter_rows(conn)]
        mirrors.close()
        fresh = open_mirrors(tmp_path / "new.jsonl")  # a file configured now starts now
        assert fresh is not None and catch_up(fresh, conn, head) == 0
        fresh.close()
    finally:
        conn.close()
    assert [json.loads(x) for x in jsonl.read_text().splitlines()] == stored
    check = ocsf_map.verify_export(ocsf_path.read_text().splitlines())
    assert check.ok and check.events == 5


def test_attack_unicode_line_breaks_in_a_run_id_keep_each_event_one_line(tmp_path: Path) -> None:
    """A run id may hold any character but ASCII controls: U+2028, U+2029 and NEL pass
    JSON raw, and str.splitlines, JavaScript and some shippers break lines on them."""
    run = "manual__a\u2028{}\u2029b\x85c"
    records = [AuditRecord("denied", **{**WHO, "run_id": run}, resource="x", action="read")] * 3
    rows = _rows(records)
    sinks = (JsonlSink(tmp_path / "a.jsonl"), OcsfSink(tmp_path / "a.ocsf"))
    for sink in sinks:
        sink.write(rows)
        sink.close()
        lines = sink.path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 3, sink.path
        parsed = [json.loads(x) for x in lines]
        assert {(p.get("run_id") or p["unmapped"]["lockgate"]["run_id"]) for p in parsed} == {run}
    assert ocsf_map.verify_export((tmp_path / "a.ocsf").read_text().splitlines()).ok


def test_attack_the_export_command_keeps_each_event_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from lockgate.cli import main

    config = tmp_path / "lockgate.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data")}))
    log = AuditLog(tmp_path / "data" / "audit.db")
    try:
        for _ in range(2):
            log.emit(AuditRecord("denied", **{**WHO, "run_id": "r\u2028x\x85"}, resource="x"))
        assert log.flush(10)
    finally:
        log.close()
    for fmt in ("ocsf", "jsonl"):
        capsys.readouterr()
        assert main(["-c", str(config), "audit", "export", "--format", fmt]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 2, fmt


def _paths(node: object, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    if isinstance(node, dict):
        items: list[tuple[str | int, object]] = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        return []
    out = []
    for key, value in items:
        out.append((*path, key))
        out += _paths(value, (*path, key))
    return out


def test_attack_any_value_edited_anywhere_is_found_and_never_crashes_the_check(
    tmp_path: Path,
) -> None:
    lines = _export(tmp_path, [r for r, _, _ in _records()])
    odd: list[object] = [None, 0, True, 1.5, "x", [], {"a": 1}, 10**30]
    for index in (1, 7, 10, 14):  # an HTTP request, a datastore one, a login, a mint
        event = json.loads(lines[index])
        before = json.loads(lines[index - 1])["unmapped"]["lockgate"]["prev_hash"]
        assert ocsf_map.verify_export([lines[index - 1], lines[index]], before).ok
        for path in _paths(event):
            if path == ("metadata", "product", "version"):
                continue  # the writing Lockgate's version: not part of the record
            for value in odd:
                edited = json.loads(lines[index])
                node = edited
                for key in path[:-1]:
                    node = node[key]
                if node[path[-1]] == value and type(node[path[-1]]) is type(value):
                    continue
                node[path[-1]] = value
                # the line before and the edited one suffice (the rest verifies as before)
                tampered = [lines[index - 1], json.dumps(edited)]
                assert not ocsf_map.verify_export(tampered, before).ok, (index, path, value)


def test_attack_a_running_gateway_exports_crafted_requests_as_valid_ocsf(tmp_path: Path) -> None:
    """Crafted paths and a run id of odd characters through a real gateway: each record's
    event in audit.ocsf is valid OCSF of its class, one line, and the export verifies."""
    import urllib.error
    import urllib.request

    import yaml

    from lockgate.demo.stack import LocalStack
    from lockgate.identity import TaskIdentity

    stack = LocalStack(tmp_path / "gw", tls=False)
    config = yaml.safe_load(stack.config_path.read_text())
    config.setdefault("audit", {})["ocsf"] = str(tmp_path / "audit.ocsf")
    stack.config_path.write_text(yaml.safe_dump(config))
    run = 'manual__"}\u2028<!channel>\x85é'
    paths = ["/orders-api/orders", "/orders-api/%0A%22%7D%7B%22x%22:1%7D", "/orders-api/%E2%80%A8",
             "/orders-api/" + "y" * 4000, "/nope/x"]  # fmt: skip
    with stack:
        assert stack.gateway is not None
        token = stack.gateway.issuer.mint(
            TaskIdentity("prod", "finance_daily", "load", run, 1, -1), "orders-api", 300
        )[0]
        auth = {"Authorization": f"Bearer {token}"}
        for path in paths:
            for body in (None, b"{}"):  # a read and a write
                req = urllib.request.Request(stack.http_url + path, data=body, headers=auth)
                with contextlib.suppress(urllib.error.HTTPError, urllib.error.URLError):
                    urllib.request.urlopen(req, timeout=10).read()
        assert stack.gateway.audit.flush(10)
    lines = (tmp_path / "audit.ocsf").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= len(paths)
    events = [json.loads(x) for x in lines]
    for ev in events:
        _valid(ev)
    assert any(ev["unmapped"]["lockgate"].get("run_id") == run for ev in events)
    first_prev = events[0]["unmapped"]["lockgate"]["prev_hash"]
    assert ocsf_map.verify_export(lines, first_prev).ok
    assert token not in "\n".join(lines)
