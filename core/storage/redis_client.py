"""The asyncio Redis client, configured once for every process and test.

redis-py 8 defaults to a 5 s socket timeout and RESP3; the values are set here
explicitly, above the longest blocking read Herald does (pub/sub polls of 1 s),
with a short capped retry so a restarted server is reconnected transparently.
The pool blocks when all its connections are busy: redis-py's default pool
fails at once instead, which under a burst of messages turned into "memory
store unavailable" answers and locks left behind until their lease expired.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError


def connect_redis(
    url: str,
    *,
    socket_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    max_connections: int = 64,
    pool_timeout: float = 10.0,
) -> Redis:
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[ConnectionError, TimeoutError],
        health_check_interval=15,
    )
    return Redis.from_pool(pool)  # the client owns the pool and closes it


def honour_cancellation() -> None:
    """Raise the CancelledError that a library swallowed.

    On Python 3.11, `asyncio.wait_for` returns the result instead of raising when the
    cancellation arrives just as the awaited operation completes, and redis-py sends
    every command through it: a task cancelled during a Redis call can carry on as if
    nothing happened (its `cancelling()` count stays up). A loop that runs until it is
    cancelled calls this between rounds, or it could run on forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
