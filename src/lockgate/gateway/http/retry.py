"""When and how long to wait before another upstream attempt.

* Retried: 429/502/503/504 answers and connection failures, for idempotent methods only
  (RFC 9110 §9.2.2), or any method when nothing was sent (connect failed). The request
  body must still be replayable.
* Delay: exponential backoff with full jitter, ``uniform(0, min(max_delay,
  base_delay * 2**attempt))``; a server hint, when given, is a floor: ``x-ms-retry-after-ms``
  (milliseconds, Azure) or ``Retry-After`` (delta-seconds or an HTTP-date).
* Deadline: all attempts together stay within ``deadline`` seconds; when the next wait
  would end past it, the last answer is relayed as it is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lockgate.config import RetrySettings

RETRY_STATUSES = frozenset({429, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
MAX_HINT = 300.0  # seconds; a larger hint is treated as "do not retry within the deadline"


def retry_after(
    headers: Sequence[tuple[bytes, bytes]], wall: Callable[[], float] = time.time
) -> float | None:
    """Seconds the upstream asked us to wait, or None."""
    seconds: float | None = None
    for name, value in headers:
        low = name.lower()
        if low == b"x-ms-retry-after-ms":
            try:
                ms = float(value)
            except ValueError:
                continue
            if 0 <= ms <= MAX_HINT * 1000:
                return ms / 1000.0  # the most precise hint wins
        elif low == b"retry-after" and seconds is None:
            seconds = _parse_retry_after(value, wall)
    return seconds


def _parse_retry_after(value: bytes, wall: Callable[[], float]) -> float | None:
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return min(float(text), MAX_HINT + 1)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, min(when.timestamp() - wall(), MAX_HINT + 1))


class Backoff:
    """Backoff schedule for one resource's retry settings."""

    __slots__ = ("_random", "base", "cap", "deadline", "max_attempts")

    def __init__(self, settings: RetrySettings, rand: Callable[[], float] = random.random) -> None:
        self.max_attempts = int(settings.max_attempts)
        self.base = float(settings.base_delay)
        self.cap = float(settings.max_delay)
        self.deadline = float(settings.deadline)
        self._random = rand

    def delay(self, attempt: int, hint: float | None = None) -> float:
        """Wait before attempt number ``attempt + 1`` (``attempt`` counts from 0)."""
        jitter = self._random() * min(self.cap, self.base * (2.0**attempt))
        # A hint is a floor: "Retry-After: 0" must not turn retries into a hot loop.
        return jitter if hint is None else max(hint, jitter)

    def next_delay(
        self, attempt: int, now: float, deadline_at: float, hint: float | None = None
    ) -> float | None:
        """The wait before another attempt, or None when no attempt is left in budget."""
        if attempt + 1 >= self.max_attempts:
            return None
        if hint is not None and hint > MAX_HINT:
            return None
        wait = self.delay(attempt, hint)
        if now + wait >= deadline_at:
            return None
        return wait
