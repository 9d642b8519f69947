"""The asyncio Redis client, configured once for every process and test.

redis-py 8 defaults to a 5 s socket timeout and RESP3; the values are set here
explicitly, above the longest blocking read Herald does (pub/sub polls of 1 s),
with a short capped retry so a restarted server is reconnected transparently.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError


def connect_redis(url: str, *, socket_timeout: float = 10.0, connect_timeout: float = 5.0) -> Redis:
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
        health_check_interval=15,
    )
