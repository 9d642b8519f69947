"""/summary over spans far larger than the model reads at once (issue 13).

    .venv/bin/python -m bench.summary [--messages 5000] [--inputs 2048,4096,8192,32768]

For each model input limit, a TGI emulator (`tests.emulators.tgi`, which refuses
any prompt over its limit exactly as TGI does, with a 422) serves Herald's own
TGI client (`bots.runtime.build_llm`), and the summary of `--messages` generated
chat messages (`bench.chatlog.Chatter`: 120–280 characters, 200 on average) is
made as `/summary` makes it: `core.chatlog.summary.Summariser` with the budget
`ContextBuilder` gives the engine, then the final prompt streamed. The model
writes notes as long as it is allowed (the worst case for combining), each
citing the first and last message of its piece.

Reported per limit: pieces, combining rounds, model calls (the streamed final
one included), the largest prompt sent against the limit, calls refused (must be
0), and the wall time with an instant model (the emulator's Python tokenizer
dominates it: it is not Herald's cost). The exit status is 0 whatever the
numbers say: this is a report, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import time
from dataclasses import dataclass

from bench.chatlog import Chatter
from bots.runtime import build_llm
from core.chat.context import ContextBuilder
from core.chatlog.summary import Summariser
from core.config import load_settings
from core.llm.base import GenerationParams
from core.llm.errors import LLMError
from core.llm.transport import collect
from tests.emulators.tgi import TGIEmulator

_NUMBERS = re.compile(r"\[(\d+)\]")
#: what a model's notes read like, repeated until its token limit cuts them
_NOTES = "- people discussed the plan, raised a question and agreed on the next step; "


def model(messages: list[dict[str, str]]) -> str:
    numbers = _NUMBERS.findall(messages[-1]["content"])
    cites = f"[{numbers[0]}][{numbers[-1]}]" if numbers else ""
    return f"{cites} " + _NOTES * 100


@dataclass(frozen=True)
class Run:
    limit: int
    budget: int
    messages: int
    pieces: int
    levels: int
    calls: int  # model calls, the final one included
    largest: int
    refused: int
    seconds: float
    error: str = ""


async def measure(limit: int, count: int) -> Run:
    chatter = Chatter(seed=13)
    messages = chatter.messages(count, time.time(), seed=13)
    async with TGIEmulator(
        max_input_tokens=limit, max_total_tokens=limit + 1024, responder=model, record=False
    ) as tgi:
        settings = load_settings(env_file=None, tgi_url=tgi.url)
        llm = build_llm(settings)
        await llm.start()
        context = ContextBuilder(
            llm,
            max_new_tokens=settings.max_new_tokens,
            margin=settings.context_margin,
            block_messages=settings.context_block_messages,
        )
        budget = context.budget
        summariser = Summariser(llm, lambda: budget)
        started = time.perf_counter()
        try:
            digest = await summariser.digest(messages)
            final = await llm.prepare(digest.prompt)
            await collect(llm.stream(final, GenerationParams(max_new_tokens=settings.max_new_tokens)))
        except LLMError as exc:
            return Run(limit, budget, count, 0, 0, 0, 0, 1, time.perf_counter() - started, repr(exc))
        finally:
            await llm.close()
        seconds = time.perf_counter() - started
        return Run(
            limit,
            budget,
            count,
            digest.pieces,
            digest.levels,
            digest.calls + 1,
            max(digest.largest_input, final.input_tokens),
            0,
            seconds,
        )


async def main(count: int, limits: list[int]) -> None:
    runs = [await measure(limit, count) for limit in limits]
    where = f"{platform.machine()}, Python {platform.python_version()}"
    print(f"/summary of {count:,} generated messages ({where})\n")
    print(
        "| model input limit | budget | pieces | combining rounds | model calls | largest prompt | refused |",
        end="",
    )
    print(" wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        print(
            f"| {r.limit:,} | {r.budget:,} | {r.pieces} | {r.levels} | {r.calls} | "
            f"{r.largest:,} ({r.largest / r.limit:.0%}) | {r.refused} | {r.seconds:.1f} |"
            + (f" {r.error}" if r.error else "")
        )


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--inputs", default="2048,4096,8192,32768")
    args = parser.parse_args(argv)
    asyncio.run(main(args.messages, [int(x) for x in args.inputs.split(",")]))


if __name__ == "__main__":
    cli()
