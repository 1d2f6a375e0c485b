"""What a process keeps of the shared quota budgets (:mod:`.shared`) between round trips:
a rate's lease (tokens taken from the bucket at once, spent at the rate it refills), a cap's
slots (held, in use, written) and the runs started or finished not written yet."""

from __future__ import annotations

from dataclasses import dataclass, field

from lockgate.quotas.budgets import RateAnswer

#: A lease takes this share of a second's tokens (at least one, at most the burst).
LEASE_SHARE = 0.05
#: Seconds a process may spend a lease before what is left goes back.
LEASE_SECONDS = 0.1


@dataclass(slots=True)
class Lease:
    """Tokens this process took from a bucket at once. The bucket held ``level`` at
    ``since``; token k (1-based) of the lease is due when the bucket would have held k,
    so a lease taken in debt spaces its tokens as the bucket refills (pacing, and no burst
    beyond the bucket's own across processes)."""

    size: int = 0
    taken: int = 0
    carry: int = 0  # tokens given back while no lease was open (go back with the next)
    level: float = 0.0
    since: float = 0.0
    until: float = 0.0  # when what is left goes back to the bucket
    empty_until: float = 0.0  # the bucket was too deep in debt: refuse locally until then

    def start(self, now: float, level: float, size: int, rate: float) -> None:
        self.size, self.taken, self.level, self.since = size, 0, level, now
        self.until = self.due(size, rate) + LEASE_SECONDS
        self.empty_until = 0.0

    def due(self, k: int, rate: float) -> float:
        return self.since + max(0.0, k - self.level) / rate

    def spend(self, now: float, rate: float, max_delay: float) -> RateAnswer:
        """The next token: now, after a wait of at most ``max_delay``, or refused with the
        time until it could be had (it stays in the lease)."""
        wait = self.due(self.taken + 1, rate) - now
        if wait <= 0:
            self.taken += 1
            return RateAnswer(True, 0.0)
        if wait <= max_delay:
            self.taken += 1
            return RateAnswer(True, wait)
        return RateAnswer(False, max(0.001, round(wait - max_delay, 3)))


@dataclass(slots=True)
class Slots:
    """A cap's slots as this process holds them between writes."""

    held: int = 0  # slots this process may use (what it was granted, less what went back)
    used: int = 0  # slots in use now (the difference goes back with the next write)
    written: int = 0  # what this process's row in the database says
    full_until: float = 0.0  # the database said the cap is full: refuse locally until then

    @property
    def dirty(self) -> bool:
        return self.held != self.used or self.written != self.used


@dataclass(slots=True)
class Pending:
    """Runs started and finished, to be written by the background thread."""

    started: list[tuple[str, str, str, float]] = field(default_factory=list)
    finished: list[tuple[str, str]] = field(default_factory=list)


__all__ = ["LEASE_SECONDS", "LEASE_SHARE", "Lease", "Pending", "Slots"]
