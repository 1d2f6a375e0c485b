"""When an audit log refuses: the one rule both writers (thread and process) follow.

Fail closed on a write error, after close, when writing makes no progress for
``write_timeout`` (a hung write, a stopped writer), or when the bounded queue is full. A deep
backlog that keeps committing is healthy: the queue bound refuses (backpressure) before
memory grows, and a slow-but-moving writer never turns into refused requests.
"""

from __future__ import annotations

import time

from lockgate.errors import AuditUnavailable


def check_health(
    *,
    error: str | None,
    closing: bool,
    stalled_since: float | None,
    queued: int,
    write_timeout: float,
    max_queue: int,
) -> None:
    """Raise AuditUnavailable naming why records cannot be written in time.

    ``stalled_since`` is the monotonic time since when the oldest waiting record has seen
    no progress (the later of its enqueue time and the last commit), or None if none waits.
    """
    if error is not None:
        raise AuditUnavailable(f"audit log cannot write: {error}")
    if closing:
        raise AuditUnavailable("audit log is closed")
    if stalled_since is not None and time.monotonic() - stalled_since > write_timeout:
        raise AuditUnavailable(f"audit write pending for more than {write_timeout:g}s")
    if queued >= max_queue:
        raise AuditUnavailable("audit log queue is full")
