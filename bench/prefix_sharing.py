"""How much of the prompt consecutive turns share in a long conversation.

TGI reuses the KV cache of a repeated prompt prefix. This drives long
conversations through the real engine (private Redis, the TGI emulator in this
process) with Herald's default settings, against three model sizes: a 32k-token
model (what TGI gives the deployment's default model on a large GPU: the
history's 200 messages bind), an 8k-token one, and a 1k-token one (the model's
budget binds). Answers vary in length (20 to 200 words). For each, it reports
how often a prompt extends the previous one whole, the mean shared prefix, and
the mean prompt size (how much context the model gets), over the turns after
the conversation first overflowed, where the dropping policy shows.

Run: .venv/bin/python -m bench.prefix_sharing [--turns 400] [--blocks 8,32] [--models 32k,8k,1k]
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
#: (name, max_input_tokens, max_total_tokens)
MODELS = (("32k", 32767, 32768), ("8k", 8191, 8192), ("1k", 1024, 1280))


def answer(messages: list[dict[str, str]]) -> str:
    """20 to 200 words, varying with the conversation's turn ("message N: …")."""
    turn = int(messages[-1]["content"].split(":", 1)[0].removeprefix("message "))
    words = 20 + (turn * 37) % 181
    return " ".join(f"word{(turn + i) % 97}" for i in range(words))


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
    model: str
    block: int
    prompts: int  # measured: from the first that dropped something on
    whole: int  # prompts that extend the previous prompt entirely
    mean_shared: float  # shared prefix / prompt length, averaged
    mean_tokens: float  # prompt size: the context the model gets


async def measure(redis_url: str, model: tuple[str, int, int], block: int, turns: int) -> Sharing:
    name, max_input, max_total = model
    async with TGIEmulator(max_input_tokens=max_input, max_total_tokens=max_total) as tgi:
        tgi.responder = answer
        settings = load_settings(
            env_file=None,
            tgi_url=tgi.url,
            redis_url=redis_url,
            redis_prefix=f"bench-{uuid.uuid4().hex[:8]}",
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
        first_drop = next((i for i, (a, b) in enumerate(pairs) if not b.startswith(a)), len(pairs))
        pairs = pairs[first_drop:]
        if not pairs:
            return Sharing(name, block, 0, 0, 0.0, 0.0)
        whole = sum(b.startswith(a) for a, b in pairs)
        shared = [len(os.path.commonprefix([a, b])) / len(b) for a, b in pairs]  # noqa: RUF071
        tokens = [tgi.count(b) for _, b in pairs]
        return Sharing(name, block, len(pairs), whole, sum(shared) / len(shared), sum(tokens) / len(tokens))


async def main(turns: int, blocks: list[int], models: list[str]) -> None:
    chosen = [m for m in MODELS if m[0] in models]
    with RedisServerProcess() as server:
        results = [await measure(server.url, model, block, turns) for model in chosen for block in blocks]
    print(f"{turns} turns a conversation; Herald's defaults: answers up to 512 tokens, 200 messages\n")
    print(
        "| model input | block (messages) | prompts measured | extending the previous one whole "
        "| mean shared prefix | mean prompt tokens |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        share = f"{r.whole}/{r.prompts} ({r.whole / r.prompts:.0%})" if r.prompts else "-"
        tokens = f"{r.mean_tokens:.0f}"
        print(f"| {r.model} | {r.block} | {r.prompts} | {share} | {r.mean_shared:.1%} | {tokens} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=400)
    parser.add_argument("--blocks", default="8,32", help="HERALD_CONTEXT_BLOCK_MESSAGES values, with commas")
    parser.add_argument("--models", default="32k,8k,1k", help="model input sizes, with commas")
    arguments = parser.parse_args()
    blocks = [int(b) for b in arguments.blocks.split(",")]
    models = arguments.models.split(",")
    if unknown := set(models) - {name for name, _, _ in MODELS}:
        parser.error(f"unknown model sizes {sorted(unknown)}: choose from 32k, 8k, 1k")
    asyncio.run(main(arguments.turns, blocks, models))
