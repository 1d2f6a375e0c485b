"""Start, watch and restart the audit writer process (:mod:`lockgate.audit.writer`).

One :class:`WriterProcess` per chain: :class:`~lockgate.audit.remote.RemoteAuditLog` owns one
when it runs alone, the supervisor of ``lockgate serve --workers N`` when several gateway
processes share the chain. The writer listens on a Unix socket in a private 0700 directory,
so only this user can connect to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

from lockgate import _log
from lockgate.audit.shipping import AuditShipping

log = _log.get("audit")


class WriterProcess:
    """Start, watch and restart ``python -m lockgate.audit.writer``."""

    def __init__(
        self,
        db_path: Path,
        jsonl_path: Path | None = None,
        socket_path: Path | None = None,
        *,
        busy_timeout: float = 0.5,
        batch_interval: float = 0.02,
        shipping: AuditShipping | None = None,
        ocsf_path: Path | None = None,
        datastores: Mapping[str, int] | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.jsonl_path = jsonl_path
        # the OCSF mirror, and which resources' requests are Datastore Activity there
        self.ocsf_path = ocsf_path
        self.datastores = dict(datastores or {})
        self._tmp: str | None = None
        if socket_path is None:  # a private 0700 directory: only this user may connect
            self._tmp = tempfile.mkdtemp(prefix="lockgate-audit-")
            socket_path = Path(self._tmp) / "writer.sock"
        self.socket_path = Path(socket_path)
        self.busy_timeout = busy_timeout
        self.batch_interval = batch_interval
        self.shipping = shipping  # the writer ships its chain to the shared trail too
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        args = [
            sys.executable, "-m", "lockgate.audit.writer", str(self.db_path),
            "--socket", str(self.socket_path), "--parent-pid", str(os.getpid()),
            "--busy-timeout", str(self.busy_timeout),
            "--batch-interval", str(self.batch_interval),
        ]  # fmt: skip
        if self.jsonl_path is not None:
            args += ["--jsonl", str(self.jsonl_path)]
        if self.ocsf_path is not None:
            args += ["--ocsf", str(self.ocsf_path)]
            for name, type_id in sorted(self.datastores.items()):  # names: NAME_RE, no "="
                args += ["--ocsf-datastore", f"{name}={type_id}"]
        if self.shipping is None:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
            return
        # on stdin, not argv or the environment: it carries the checkpoint signing key
        args.append("--shipping-stdin")
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE)
        assert self.proc.stdin is not None
        try:
            with self.proc.stdin as pipe:
                pipe.write(self.shipping.to_json().encode())
        except OSError as exc:  # it died at once: seen as exited, restarted by the next look
            log.error("audit writer did not take its shipping settings",
                      extra={"fields": {"error": str(exc)}})  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> bool:
        """Restart the writer if it exited; True when it had to."""
        with self._lock:
            if self.proc is None or self.proc.poll() is None:
                return False
            code = self.proc.returncode
            self.restarts += 1
            log.error(
                "audit writer process exited; restarting it",
                extra={"fields": {"exit_code": code, "restarts": self.restarts}},
            )
            self._spawn()
            return True

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the writer drains what it holds, then exits
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
