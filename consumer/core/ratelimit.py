"""Token buckets per client: pure rate-limit policy for the gateway, no IO.

A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a request
takes one token per explanation it asks for. A refusal says how long until enough tokens
will be there (the ``Retry-After`` the gateway sends).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["ClientBuckets", "Decision", "TokenBucket"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may pass and, if not, seconds until it could."""

    allowed: bool
    retry_after_s: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, at least 1 (RFC 9110 allows integers only)."""
        return str(max(1, math.ceil(self.retry_after_s)))


@dataclass(slots=True)
class TokenBucket:
    """One client's bucket; starts full."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, cost: float, now: float) -> Decision:
        """Take ``cost`` tokens at ``now`` if there are enough; never goes negative."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if cost > self.burst:
            # Can never pass whole: the wait is for a full bucket, then the caller must split.
            return Decision(False, (self.burst - self.tokens) / self.rate + cost / self.rate)
        if self.tokens >= cost:
            self.tokens -= cost
            return Decision(True)
        return Decision(False, (cost - self.tokens) / self.rate)


class ClientBuckets:
    """A bucket per client key, at most ``max_clients`` remembered (least recent evicted:
    an evicted client starts again with a full bucket, so the bound costs at most one burst)."""

    def __init__(self, rate: float, burst: float, max_clients: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("rate must be positive, burst and max_clients at least 1")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, client: str, cost: float, now: float) -> Decision:
        """Charge ``cost`` requests to ``client`` at ``now``."""
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, self.burst, now)
            self._buckets[client] = bucket
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket.take(cost, now)

    def __len__(self) -> int:
        return len(self._buckets)
