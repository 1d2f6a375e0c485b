"""Hot reload: hold the current :class:`PolicySet`, swap it when the files change.

Strategy:

* ``paths_fn`` is asked for the file list on every check, so a file added to or removed from
  a glob counts as a change.
* Cheap check first: if the (path, mtime_ns, size) list is unchanged and every mtime is
  safely in the past, nothing is read. Otherwise each file is read once, the bytes are hashed
  and, if the combined hash differs from the last one tried, parsed from those same bytes
  (no window for a file to change between hashing and parsing).
* A broken file never replaces a good set: the last good set stays current, ``last_error``
  names the file and field, the error is logged once and counted
  (``lockgate_policy_reloads_total{outcome="error"}``). Fixing the file reloads it.
* The swap is one reference assignment, so readers see the old set or the new one, whole.
* ``known_resources`` is the catalog literal resource names are checked against; it follows
  a catalog changed live (:meth:`PolicyStore.update_known_resources`), which re-checks the
  files at once: a rule naming a resource just added is accepted, a file naming one just
  removed is refused like any broken file (the last good set stays).
* Shadow files (``mode: shadow``) load into :attr:`PolicyStore.shadow`, apart from
  ``current`` (which never includes them); None when there are none. A broken shadow file
  turns the shadow set off (``shadow_error`` says where, logged once) and never stops the
  enforced files from loading.
* The first load happens in the constructor. If it fails, ``current`` is the empty set (which
  denies everything) and ``last_error`` says why; pass ``raise_on_error=True`` to get a
  :class:`ConfigError` instead (a gateway may prefer not to start on a broken policy).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lockgate import _log, metrics
from lockgate.errors import ConfigError
from lockgate.policy.engine import PolicySet
from lockgate.policy.loader import load_policy_texts

log = _log.get("policy")

# mtimes closer than this to "now" may be followed by a same-size write within the same
# filesystem timestamp tick; such files are re-read rather than trusted.
_MTIME_SETTLE_NS = 2_000_000_000


class PolicyStore:
    def __init__(
        self,
        paths_fn: Callable[[], Sequence[Path]],
        known_resources: set[str] | None = None,
        *,
        raise_on_error: bool = False,
    ) -> None:
        self._paths_fn = paths_fn
        self._known = set(known_resources) if known_resources is not None else None
        self._current = PolicySet.empty()
        self._shadow: PolicySet | None = None
        self._lock = threading.Lock()
        self._stat_sig: tuple[tuple[str, int, int], ...] | None = None
        self._tried_digest: bytes | None = None
        self.last_error: str | None = None
        self.shadow_error: str | None = None
        self.loaded_at: float | None = None
        self.reload_if_changed()
        if raise_on_error and self.loaded_at is None:
            raise ConfigError(self.last_error or "policy: nothing loaded")

    @property
    def current(self) -> PolicySet:
        return self._current

    @property
    def shadow(self) -> PolicySet | None:
        """The shadow set (watched, never enforced); None without shadow files."""
        return self._shadow

    def reload_if_changed(self) -> bool:
        """Reload if the file set or any file's content changed. True if a new set is live."""
        with self._lock:
            return self._reload()

    def update_known_resources(self, names: Iterable[str]) -> bool:
        """Check policy files against a new catalog from now on, and re-check them at once
        (their bytes may be unchanged, the verdict not). True if a new set is live."""
        with self._lock:
            self._known = set(names)
            self._stat_sig = None  # forget what was read: the same files get a new verdict
            self._tried_digest = None
            return self._reload()

    def _reload(self) -> bool:
        try:
            paths = [Path(p) for p in self._paths_fn()]
            stats = [(str(p), p.stat()) for p in paths]
        except OSError as exc:
            return self._fail(f"{getattr(exc, 'filename', '') or 'policy'}: {exc.strerror or exc}")
        sig = tuple((src, st.st_mtime_ns, st.st_size) for src, st in stats)
        settled = all(time.time_ns() - st.st_mtime_ns > _MTIME_SETTLE_NS for _, st in stats)
        if sig == self._stat_sig and settled:
            return False
        try:
            blobs = [(str(p), p.read_bytes()) for p in paths]
        except OSError as exc:
            return self._fail(f"{exc.filename or 'policy'}: cannot read: {exc.strerror or exc}")
        self._stat_sig = sig
        digest = _digest(blobs)
        if digest == self._tried_digest:
            return False
        self._tried_digest = digest
        try:
            texts = [(src, _decode(src, data)) for src, data in blobs]
            loaded = load_policy_texts(texts, self._known)
        except ConfigError as exc:
            return self._fail(str(exc))
        new = loaded.enforced
        self._current = new  # the atomic swap
        self._shadow = loaded.shadow
        self._shadow_failed(loaded.shadow_error)
        self.last_error = None
        self.loaded_at = time.time()
        metrics.POLICY_RELOADS.labels(outcome="ok").inc()
        log.info(
            "policy loaded",
            extra={"fields": {"files": [s for s, _ in blobs], "rules": len(new)}},
        )
        return True

    def _fail(self, message: str) -> bool:
        if message != self.last_error:
            self.last_error = message
            metrics.POLICY_RELOADS.labels(outcome="error").inc()
            log.error(
                "policy reload failed; keeping the last good policy",
                extra={"fields": {"error": message}},
            )
        return False

    def _shadow_failed(self, message: str | None) -> None:
        if message is not None and message != self.shadow_error:
            log.error(
                "shadow policy not loaded; enforcement unchanged",
                extra={"fields": {"error": message}},
            )
        self.shadow_error = message

    async def watch(self, interval: float = 1.0) -> None:
        """Poll for changes until cancelled. Never dies on an error: it logs and goes on."""
        while True:
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception:
                log.exception("policy watch check failed")
            await asyncio.sleep(interval)


def _digest(blobs: list[tuple[str, bytes]]) -> bytes:
    h = hashlib.sha256()
    for src, data in blobs:
        # Length-prefix each part so ("a", "bc") and ("ab", "c") cannot collide.
        for part in (src.encode(), data):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
    return h.digest()


def _decode(source: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: policy file is not valid UTF-8") from None
