"""A console over real state for the page tests: a configuration with one deployment and
one HTTP resource, the :class:`~lockgate.state.State` over it, and the audit trail the
console reads and writes (:class:`Trail`, a real AuditLog)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lockgate.audit import AuditLog, AuditReader, AuditRecord, AuditRow
from lockgate.config import load_config
from lockgate.state import State

RESOURCE = "orders-api"


@contextmanager
def real_state(tmp_path: Path) -> Iterator[State]:
    """State over a configuration in ``tmp_path``: deployment ``prod`` (any DAG), resource
    :data:`RESOURCE`; closed at the block's end. Unset LOCKGATE_MASTER_KEY first."""
    path = tmp_path / "lockgate.yaml"
    path.write_text(
        json.dumps(  # JSON is YAML
            {"data_dir": str(tmp_path / "data"),
             "deployments": [{"name": "prod", "dags": ["*"],
                              "proof": {"type": "client_secret", "secret_sha256": "0" * 64}}],
             "resources": [{"name": RESOURCE, "kind": "http",
                            "upstream": "https://orders.example.com"}]}
        )
    )  # fmt: skip
    st = State(load_config(path))
    try:
        yield st
    finally:
        st.close()


class Trail:
    """The audit trail the console reads and writes (a real AuditLog)."""

    def __init__(self, st: State) -> None:
        self.path = st.config.data_dir / "audit.db"
        self.log = AuditLog(self.path)

    def write(self, *records: AuditRecord) -> None:
        for r in records:
            self.log.emit(r)
        assert self.log.flush(10)

    def rows(self, event: str) -> list[AuditRow]:
        self.log.flush(10)
        with AuditReader(self.path) as reader:
            return [r for r in reader.tail(500) if r.event == event]

    def close(self) -> None:
        self.log.close()
