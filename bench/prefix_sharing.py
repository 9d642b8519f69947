"""How much of the prompt consecutive turns share in a long conversation.

TGI reuses the KV cache of a repeated prompt prefix. This drives one long
conversation through the real engine (private Redis, the TGI emulator in this
process, a small model budget so the history overflows early) and reports,
for several block sizes, how often a prompt extends the previous one whole
and how much of it is shared on average.

Run: .venv/bin/python -m bench.prefix_sharing [--turns 120]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bots.redis_server import RedisServerProcess
from bots.runtime import build_engine, build_llm
from core.config import load_settings
from core.platform import Author, Button, Capabilities, Inbound, MessageRef, Surface
from core.storage.redis_client import connect_redis
from tests.emulators.tgi import TGIEmulator

SENTENCE = "the quick brown fox jumps over the lazy dog again and again today"


class _NullSurface(Surface):
    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_length=4000, min_edit_interval=0.0)

    async def typing(self) -> None:
        return None

    async def send(
        self, text: str, reply_to: MessageRef | None = None, buttons: Sequence[Button] = ()
    ) -> MessageRef:
        return MessageRef("1")

    async def edit(self, ref: MessageRef, text: str) -> None:
        return None


@dataclass(frozen=True)
class Sharing:
    block: int
    prompts: int
    whole: int  # prompts that extend the previous prompt entirely
    mean_shared: float  # shared prefix / prompt length, averaged
    mean_tokens: float  # prompt size, to show the budget is used


async def measure(redis_url: str, block: int, turns: int) -> Sharing:
    async with TGIEmulator(max_input_tokens=1024, max_total_tokens=1280) as tgi:
        settings = load_settings(
            env_file=None,
            tgi_url=tgi.url,
            redis_url=redis_url,
            redis_prefix=f"bench-{uuid.uuid4().hex[:8]}",
            max_new_tokens=128,
            context_block_messages=block,
            rate_limit_burst=1_000_000,
            daily_token_quota=0,
        )
        redis = connect_redis(redis_url)
        llm = build_llm(settings)
        await llm.start()
        engine = build_engine(settings, redis, llm)
        try:
            for i in range(turns):
                inbound = Inbound(
                    platform="bench",
                    event_id=f"e{i}",
                    chat_id="c",
                    author=Author("u"),
                    text=f"message {i}: {SENTENCE}",
                    addressed=True,
                    is_private=True,
                )
                await engine.handle(inbound, _NullSurface())
        finally:
            await llm.close()
            await redis.aclose()
        prompts = tgi.prompts
        pairs = list(itertools.pairwise(prompts))
        whole = sum(b.startswith(a) for a, b in pairs)
        shared = [len(os.path.commonprefix([a, b])) / len(b) for a, b in pairs]  # noqa: RUF071
        tokens = [tgi.count(p) for p in prompts]
        return Sharing(block, len(prompts), whole, sum(shared) / len(shared), sum(tokens) / len(tokens))


async def main(turns: int) -> None:
    with RedisServerProcess() as server:
        results = [await measure(server.url, block, turns) for block in (2, 4, 8, 16, 32)]
    print(f"{turns} turns, model input budget 1024 tokens, answers up to 128 tokens\n")
    print(
        "| block (messages) | prompts extending the previous one whole "
        "| mean shared prefix | mean prompt tokens |"
    )
    print("| ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r.block} | {r.whole}/{r.prompts - 1} ({r.whole / (r.prompts - 1):.0%}) "
            f"| {r.mean_shared:.0%} | {r.mean_tokens:.0f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=120)
    asyncio.run(main(parser.parse_args().turns))
