"""``lockgate serve --workers N``: a supervisor process, one audit writer process and N
worker processes.

Each worker runs a :class:`lockgate.server.Gateway` on the same http port (SO_REUSEPORT, the
kernel spreads connections) with its own verifier, policy store and broker, and sends its
audit records to the shared writer (one chain). Only worker 0 serves the control plane
(token service, catalog, /metrics, health) and the engines that cannot share a port
(``every_worker = False``: the CQL engine). Every worker counts its metrics into
prometheus_client's multiprocess files in a directory of this run (``<data_dir>/metrics``,
emptied at start and removed at stop), so worker 0's /metrics adds up all of them; a dead
worker's gauges are dropped when it is replaced (:func:`lockgate.metrics.process_exited`).
The supervisor restarts a worker or the writer that dies, passes SIGHUP on to every worker
(each reloads its catalog from the config file), and on SIGINT or SIGTERM stops the workers
(each drains its audit records) before the writer. With shared state the writer also ships
the chain to PostgreSQL (:mod:`lockgate.audit`), as a single gateway's writer does.

The worker's entry point is handed in by the server (:func:`supervise`'s ``worker_main``),
so this module never imports the server that imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lockgate import _log, metrics
from lockgate.audit import ocsf
from lockgate.audit.writer_process import WriterProcess
from lockgate.config import LockgateConfig
from lockgate.errors import ConfigError
from lockgate.state import audit_shipping

log = _log.get("server")  # one logger name for everything `serve` says


def event_loop_runner() -> Any:
    """``uvloop.run`` when uvloop is installed, else ``asyncio.run``."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


#: ``worker_main(config_source, index, audit_socket, http_port)``: one worker process's body.
WorkerMain = Callable[[str, int, str, int], None]


def fresh_metrics_directory(data_dir: Path) -> Path:
    """The workers' shared metrics directory, empty (a killed run's files are stale counts)
    and private (0700: the files name resources and DAGs)."""
    directory = data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    return directory


def forget_worker(metrics_dir: Path, pid: int) -> None:
    """A dead worker's gauges out of /metrics, its counts retired; a failure is logged, never
    the end of the supervisor (the worst it leaves is a stale gauge until the next start)."""
    try:
        metrics.process_exited(metrics_dir, pid)
    except Exception:
        log.exception("could not retire a dead worker's metrics", extra={"fields": {"pid": pid}})


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """``variables`` in this process's environment while a child is started (it inherits
    them), then as before: the audit writer and anything else started here stay without."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def supervise(config: LockgateConfig, workers: int, worker_main: WorkerMain) -> None:
    """Run ``workers`` worker processes (``worker_main`` in each, spawned: it must be a
    module-level function) and one audit writer until SIGINT or SIGTERM."""
    if config.source is None:
        raise ConfigError("--workers needs a configuration file (each worker loads it)")
    h = config.listeners.http
    holder: socket.socket | None = None
    port = h.port
    if port == 0:  # one port for every worker: hold it, bound but not listening, in the group
        holder = socket.socket(socket.AF_INET6 if ":" in h.host else socket.AF_INET)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((h.host, 0))
        port = holder.getsockname()[1]
    a = config.audit
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    metrics_dir = fresh_metrics_directory(config.data_dir)
    writer = WriterProcess(
        config.data_dir / "audit.db", a.jsonl, busy_timeout=max(0.05, min(a.write_timeout / 2, 1)),
        shipping=audit_shipping(config),  # shared state: the one writer ships the chain
        ocsf_path=a.ocsf, datastores=ocsf.datastores(config.resources),
    )  # fmt: skip
    writer.start()
    ctx = multiprocessing.get_context("spawn")

    def spawn(i: int) -> Any:
        args = (str(config.source), i, str(writer.socket_path), port)
        p = ctx.Process(target=worker_main, args=args, name=f"lockgate-worker-{i}")
        # The worker starts with SIGHUP blocked (the mask survives exec) and unblocks it once
        # it ignores it: one passed on while it still imports would end it. Ours is only
        # held back meanwhile, then handled.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            with environment(metrics.worker_environment(metrics_dir, i)):
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        return p

    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    procs: dict[int, Any] = {}

    def reload(*_: object) -> None:  # each worker re-reads the config file (its catalog)
        for p in list(procs.values()):
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGHUP)

    # Before the first worker: a SIGHUP in between would end the supervisor (the default
    # action) and leave its workers and the audit writer without one.
    signal.signal(signal.SIGHUP, reload)
    for i in range(workers):
        procs[i] = spawn(i)
    log.info("lockgate supervising", extra={"fields": {"workers": workers, "http_port": port}})
    try:
        while not stopping.wait(0.5):
            writer.ensure_running()
            for i, p in procs.items():
                if not p.is_alive():
                    log.error(
                        "worker exited; restarting it",
                        extra={"fields": {"worker": i, "exit_code": p.exitcode}},
                    )
                    forget_worker(metrics_dir, p.pid)  # before its successor counts
                    procs[i] = spawn(i)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        writer.stop()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if holder is not None:
            holder.close()


__all__ = ["WorkerMain", "event_loop_runner", "supervise"]
