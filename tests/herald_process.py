"""`herald run` in a child process, for tests and benchmarks that kill replicas."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.support import eventually

ROOT = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def herald_run(
    command: Sequence[str], env: dict[str, str], http_port: int, log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A `herald run` child, yielded once it answers /readyz; killed at the end."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=log.parent,  # no .env there
            env=clean | env | {"PYTHONPATH": str(ROOT), "HERALD_HTTP_ADDR": f"127.0.0.1:{http_port}"},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )

    async def ready() -> bool:
        if proc.returncode is not None:
            raise AssertionError(await asyncio.to_thread(log.read_text))
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{http_port}/readyz") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await eventually(ready, f"{' '.join(command[-2:])} ready", 60)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
