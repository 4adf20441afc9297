"""Per-connection budgets: token buckets."""


class TokenBucket:
    """Allows ``rate`` messages a second sustained, with bursts of up to ``burst``."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Spend ``amount`` tokens if there are as many; refill by the time elapsed first."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= amount:
            self.tokens -= amount
            return True
        return False

    def spend(self, amount: float, now: float) -> float:
        """Spend ``amount`` even past empty; return how long the bucket needs to be out of debt."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate) - amount
        self.updated = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
