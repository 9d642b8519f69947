"""The token bucket both platform emulators count a limit with: Telegram's chat and
bot-wide flood limits, and Discord's global limit (neither platform says how it counts;
the emulators read "so many a second" as so many a second and as many at once)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``tokens`` as of ``at``."""

    rate: float
    burst: float
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def _level(self, now: float) -> float:
        return min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is), taking nothing."""
        level = self._level(now)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def take(self, now: float) -> None:
        """Take a token (``wait(now)`` must be 0)."""
        self.tokens = self._level(now) - 1.0
        self.at = now
