"""Token-bucket rate limits: per token (a runaway or stolen token cannot flood Vault) and per
source address for refused requests (an unauthenticated flood cannot fill the disk). And the
doubling pause between retries that the NOTIFY follower and pki-watch's deliveries share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    stamp: float = field(default_factory=time.monotonic)


def doubling(first: float, most: float, attempt: int) -> float:
    """The pause before retry number `attempt` (1: the first): `first`, doubling up to `most`."""
    return min(most, first * 2 ** min(attempt - 1, 30))  # (2 ** 1024 would overflow a float)


MAX_KEYS = 10_000  # past this many buckets, the full ones are dropped (they hold no state)
DEBT_BURSTS = 10  # what `charge` may leave a bucket owing, in bursts


class RateLimiter:
    """`rate` requests per second on average, bursts up to `burst`; rate 0 means no limit."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, key: str) -> float:
        """Take one from `key`'s bucket: 0 when the request may go ahead, else the seconds until
        it would (nothing taken)."""
        wait = self.wait(key)
        if not wait and self.rate > 0:
            self._buckets[key].tokens -= 1
        return wait

    def charge(self, key: str) -> None:
        """Take one from `key`'s bucket even when it is empty. For what is paid for after the
        fact (a refusal, known once answered): requests let in together before any was charged
        are all paid for, so an address that sends many at once waits for every one of them
        (up to DEBT_BURSTS bursts owed), not for one."""
        if self.rate <= 0:
            return
        self.wait(key)  # (refills the bucket, or makes it)
        bucket = self._buckets[key]
        bucket.tokens = max(bucket.tokens - 1, -DEBT_BURSTS * self.burst)

    def wait(self, key: str) -> float:
        """The seconds until `key` may go ahead (0: now), taking nothing."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        self._buckets = {key: bucket for key, bucket in self._buckets.items()
                         if bucket.tokens + (now - bucket.stamp) * self.rate < self.burst}
