"""The asyncio Redis client, configured once for every process and test.

redis-py 8 defaults to a 5 s socket timeout and RESP3; the values are set here
explicitly, above the longest blocking read Herald does (pub/sub polls of 1 s),
with a short capped retry so a restarted server is reconnected transparently.
The pool blocks when all its connections are busy: redis-py's default pool
fails at once instead, which under a burst of messages turned into "memory
store unavailable" answers and locks left behind until their lease expired.

Redis Cluster (or a Valkey cluster), named by a `redis+cluster://` or
`rediss+cluster://` URL or by `HERALD_REDIS_CLUSTER=true`, gets redis-py's
`RedisCluster` with the same timeouts and retry policy: it reads the slot map from
the node in the URL, sends each command to the primary that owns its key, and on a
connection error reads the map again before it retries. Its errors that are no
`RedisError` (no node reachable, slots unserved) are raised as `ClusterUnavailable`,
one, so that a cluster's outage is handled wherever a server's is. Every multi-key
script and transaction of Herald keeps its keys in one slot (`core.storage.keys`
puts hash tags on them; redis-py refuses PUBLISH in a cluster's pipelines, so a
change that is announced is made and published by one script). One thing differs:
a cluster node's pool cannot block, so a primary whose `max_connections` are all
busy fails the command at once; the limit applies per primary, so a cluster has
that many times more.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.driver_info import DriverInfo
from redis.exceptions import (
    ConnectionError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TimeoutError,
)
from redis.typing import EncodableT

#: What Herald talks to: one server, or a cluster (the same commands, each sent to the
#: node that owns its key). Code that must tell them apart checks `isinstance`.
RedisClient: TypeAlias = Redis | RedisCluster

#: URL schemes that name a cluster, and the plain scheme redis-py is given instead
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class ClusterUnavailable(ConnectionError):
    """The cluster could not serve a command: no node answered, the slot map leaves slots
    unserved, or the node named is no cluster. redis-py raises these outside `RedisError`;
    as one, they reach the handlers that a single server's outage reaches."""


class _Cluster(RedisCluster):
    """`RedisCluster`, its outages raised as `ClusterUnavailable`."""

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        try:
            return await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise ClusterUnavailable(str(exc)) from exc


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def connect_redis(
    url: str,
    *,
    cluster: bool = False,
    socket_timeout: float = 10.0,
    connect_timeout: float = 5.0,
    max_connections: int = 64,
    pool_timeout: float = 10.0,
) -> RedisClient:
    """A client for `url`: a cluster when the URL says so or `cluster` is set (any
    node of the cluster will do as the URL; the others are discovered)."""
    # the same on a single server and on each node of a cluster
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "decode_responses": True,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        "retry_on_error": [ConnectionError, TimeoutError],
        "health_check_interval": 15,
        # what CLIENT SETINFO tells the server, looked up once: left to each new
        # connection, it re-reads the package's metadata (a tenth of the CPU of a
        # thousand streams opening their connections)
        "driver_info": DriverInfo(),
    }
    if cluster or is_cluster_url(url):
        parts = urlsplit(url)
        if parts.scheme == "unix":
            raise ValueError("a Redis Cluster is reached over TCP: use redis+cluster://host:port")
        plain = urlunsplit(parts._replace(scheme=CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)))
        return _Cluster.from_url(plain, **options)
    pool = BlockingConnectionPool.from_url(url, timeout=pool_timeout, **options)
    return Redis.from_pool(pool)  # the client owns the pool and closes it


async def subscriber(redis: RedisClient) -> PubSub:
    """A pub/sub connection for SUBSCRIBE (its messages only, not the confirmations).

    On a cluster it is a connection to one node, the one that owns the channel's slot:
    a classic PUBLISH reaches every node of a cluster, so one node hears every message.
    redis-py picks that node from the slot map, which a fresh client has not read yet:
    it is read first.
    """
    if isinstance(redis, RedisCluster):
        await redis.initialize()
    return redis.pubsub(ignore_subscribe_messages=True)


async def move_key(redis: RedisClient, source: str, target: str) -> bool:
    """Rename `source` to `target` unless `target` exists (RENAMENX); True when it moved.

    A cluster renames only within one slot; across slots the key is copied with its
    time to live (DUMP, RESTORE without REPLACE, so an existing target is kept) and the
    source deleted: not atomic, so a write to the source in between is lost. Herald moves
    keys only when a chat changes its id, which the old id then never writes again.
    """
    if not isinstance(redis, RedisCluster) or redis.keyslot(source) == redis.keyslot(target):
        return bool(await redis.renamenx(source, target))
    dumped = await redis.dump(source)
    if dumped is None:
        return False
    ttl = int(await redis.pttl(source))
    try:
        await redis.restore(target, max(ttl, 0), dumped)
    except ResponseError as exc:
        if "BUSYKEY" in str(exc):
            return False
        raise
    await redis.delete(source)
    return True


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
