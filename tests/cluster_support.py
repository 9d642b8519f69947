"""A real Redis Cluster for tests: primaries run from the server binary Herald embeds.

Each node is a `RedisServerProcess` (free port, scratch directory, stopped with the
suite) with cluster mode on. The cluster is formed the way `valkey-cli --cluster
create` does it, without the CLI (a wheel need not ship one): each node is given an
equal share of the 16384 slots (CLUSTER ADDSLOTSRANGE), the others MEET the first,
and then every node is waited for until it reports the cluster up, knows every node
as connected and sees every slot served.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from redis import Redis

from bots.redis_server import RedisServerProcess, free_port

SLOTS = 16384


class LocalCluster:
    """`primaries` nodes, no replicas; `url` is Herald's setting for it."""

    def __init__(self, primaries: int = 3, *, timeout: float = 30.0) -> None:
        self.timeout = timeout
        #: each node's cluster bus port: named, since the default (its port + 10000) may
        #: be taken, or past 65535
        self.bus_ports = [free_port() for _ in range(primaries)]
        self.nodes = [
            RedisServerProcess(
                extra_arguments=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",  # in the node's scratch directory
                    "--cluster-node-timeout",
                    "5000",
                    "--cluster-announce-ip",
                    "127.0.0.1",
                    "--cluster-port",
                    str(bus),
                ]
            )
            for bus in self.bus_ports
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self) -> LocalCluster:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _form(self) -> None:
        count = len(self.nodes)
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(Redis(port=port, decode_responses=True)) for port in self.ports]
            for i, client in enumerate(clients):
                client.execute_command(
                    "CLUSTER ADDSLOTSRANGE", i * SLOTS // count, (i + 1) * SLOTS // count - 1
                )
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", "127.0.0.1", self.ports[0], self.bus_ports[0])
            for port, client in zip(self.ports, clients, strict=True):
                self._wait(lambda c=client: _formed(c, count), f"node {port} to see the cluster formed")

    def _wait(self, check: Callable[[], bool], what: str) -> None:
        """Poll `check` until it holds; the timeout only bounds a broken start."""
        deadline = time.monotonic() + self.timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up after {self.timeout} s waiting for {what}")
            time.sleep(0.05)


def _formed(client: Redis, count: int) -> bool:
    """The node reports the cluster up, with every slot served and every node connected
    (redis-py parses both replies: CLUSTER INFO's fields, CLUSTER NODES by address)."""
    info = client.execute_command("CLUSTER INFO")
    if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
        return False
    nodes = client.execute_command("CLUSTER NODES").values()
    return len(nodes) == count and all(
        node["connected"] and not {"handshake", "noaddr", "fail", "fail?"} & set(node["flags"].split(","))
        for node in nodes
    )
