"""Herald's own HTTP endpoints, for orchestrators and Prometheus.

`/healthz`: the process is alive (cheap, no I/O). `/readyz`: every dependency
answers — Redis, the model server, each configured platform — else 503 with
a JSON body naming what is not; also 503 once shutdown has begun, so load
balancers stop sending webhooks here. `/metrics`: Prometheus text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from core.metrics import CONTENT_TYPE_LATEST, Metrics

#: a check answers True (ready) or False / raises (not ready)
Check = Callable[[], Awaitable[bool]]
CHECK_TIMEOUT = 2.0


class HttpServer:
    def __init__(
        self,
        addr: str,
        metrics: Metrics,
        checks: Mapping[str, Check],
        *,
        before_scrape: Callable[[], Awaitable[None]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        host, _, port = addr.rpartition(":")
        self._host, self._port = host, int(port)
        self._metrics = metrics
        self._checks = dict(checks)
        self._before_scrape = before_scrape
        self._log = logger or logging.getLogger("herald.http")
        self.stopping = False
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._scrape)
        self._runner = web.AppRunner(app, access_log=None)
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        server = self._site._server if self._site is not None else None
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._host, self._port)
        await self._site.start()
        self._log.info("HTTP: /healthz, /readyz and /metrics on %s:%d", self._host, self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        names = list(self._checks)
        results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
        checks = dict(zip(names, results, strict=True))
        if self.stopping:
            checks["process"] = "shutting down"
        ready = all(result == "ok" for result in checks.values())
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def _run(self, check: Check) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                return "ok" if await check() else "not ready"
        except TimeoutError:
            return f"no answer within {CHECK_TIMEOUT:.0f} s"
        except Exception as exc:  # a failing dependency is the answer, not an error
            return f"failed: {type(exc).__name__}"

    async def _scrape(self, request: web.Request) -> web.Response:
        if self._before_scrape is not None:
            try:
                await self._before_scrape()
            except Exception as exc:  # the rest of the metrics are still worth serving
                self._log.warning("metrics: could not refresh from Redis: %s", exc)
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
