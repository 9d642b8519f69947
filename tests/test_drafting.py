"""Drafting: lengths counted the target's way, rewrites when too long, threads, the command."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.chat.engine import Outcome
from core.posts.drafting import Drafter, DraftRequest, DraftTooLong
from core.posts.targets import Target, split_thread
from tests.conftest import EngineFactory
from tests.emulators.tgi import TGIEmulator
from tests.support import RecordingSurface, event


def test_x_counts_links_cjk_and_emoji_its_own_way() -> None:
    assert Target.X.measure("a" * 280) == 280
    assert Target.X.measure("see https://example.com/a/very/long/path/indeed") == 4 + 23
    assert Target.X.measure("你好") == 4
    assert Target.X.measure("👩‍👩‍👧") == 2
    assert not Target.X.fits("你" * 141)
    assert Target.TELEGRAM.measure("🚀") == 2 and Target.DISCORD.measure("🚀") == 1
    assert (Target.DISCORD.limit, Target.TELEGRAM.limit, Target.LINKEDIN.limit) == (2000, 4096, 3000)


sentences = st.lists(
    st.text(st.sampled_from("abc xyz你好🚀"), min_size=1, max_size=400).map(lambda s: s.strip() + "."),
    min_size=1,
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(sentences)
def test_threads_fit_are_numbered_and_lose_nothing(parts: list[str]) -> None:
    text = " ".join(parts)
    posts = split_thread(text, Target.X)
    assert all(Target.X.fits(post) for post in posts)
    if len(posts) > 1:
        assert [re.search(r" (\d+)/(\d+)$", p).groups() for p in posts] == [  # type: ignore[union-attr]
            (str(i), str(len(posts))) for i in range(1, len(posts) + 1)
        ]
    bodies = [re.sub(r" \d+/\d+$", "", p) if len(posts) > 1 else p for p in posts]
    assert "".join("".join(bodies).split()) == "".join(text.split())


def test_thread_cuts_between_sentences_when_it_can() -> None:
    sentence = "This sentence is exactly about sixty characters long, fine. "
    posts = split_thread(sentence * 10, Target.X)
    assert len(posts) == 3
    assert all(re.sub(r" \d+/\d+$", "", p).endswith("fine.") for p in posts)


def rewrite_requested(messages: list[dict[str, str]]) -> bool:
    return "Rewrite it" in messages[-1]["content"]


async def test_too_long_draft_is_rewritten_to_fit(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    long_post = "Big news! " * 40  # 400 characters
    tgi.responder = lambda m: "Big news: v2 is out. #release" if rewrite_requested(m) else long_post
    drafts = await Drafter(engine.llm, engine.policy.generation).draft(DraftRequest("announce v2", Target.X))
    assert drafts[0].posts == ("Big news: v2 is out. #release",)
    assert drafts[0].rewrites == 1 and drafts[0].fits
    rewrite = tgi.prompts[-1]
    assert "That post is 399 characters as X (Twitter) counts them; the limit is 280" in rewrite


async def test_a_draft_that_never_fits_is_refused_with_the_numbers(
    make_engine: EngineFactory, tgi: TGIEmulator
) -> None:
    engine = await make_engine(max_new_tokens=1024)
    tgi.responder = lambda m: "你好" * 200  # weighs 800 on X, whatever is asked
    with pytest.raises(DraftTooLong) as caught:
        await Drafter(engine.llm, engine.policy.generation, max_rewrites=2).draft(
            DraftRequest("say hi", Target.X)
        )
    assert (caught.value.length, caught.value.limit) == (800, 280)
    assert len(tgi.prompts) == 3  # the draft and two rewrites
    surface = RecordingSurface()
    assert await engine.handle(event("/draft x say hi"), surface) is Outcome.COMMAND
    assert surface.last == (
        "I couldn't make that fit X (Twitter): my best draft is 800 characters and the limit is 280. "
        "Try a shorter brief."
    )


async def test_draft_command_with_options(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine()
    tgi.responder = lambda m: "Herald 2.0 ships today! Try it now. #herald"
    surface = RecordingSurface()
    text = "/draft x tone=witty variants=2 hashtags=on cta=Try it now\nAnnounce Herald 2.0"
    assert await engine.handle(event(text), surface) is Outcome.COMMAND
    reply = "\n".join(surface.texts)  # one message per variant, each with its own actions
    assert len(surface.texts) == 2
    assert re.search(r"\*\*Draft 1 of 2 `\w+` for X \(Twitter\)\*\* — 43/280", reply)
    assert re.search(r"\*\*Draft 2 of 2 `\w+` for X \(Twitter\)\*\* — 43/280", reply)
    assert "/schedule draft " in reply  # saved, so it can be scheduled
    system = tgi.prompts[-1]
    assert "clever and playful" in system and "hashtags" in system
    seeds = {r.body["parameters"]["seed"] for r in tgi.requests if r.path == "/generate_stream"}
    assert seeds == {1, 2}  # the variants are sampled differently


async def test_thread_mode_splits_into_numbered_posts(make_engine: EngineFactory, tgi: TGIEmulator) -> None:
    engine = await make_engine(max_new_tokens=2048)
    tgi.responder = lambda m: " ".join(f"Point number {i} matters a great deal to us." for i in range(30))
    surface = RecordingSurface()
    assert await engine.handle(event("/draft x thread=yes why Herald"), surface) is Outcome.COMMAND
    reply = "\n".join(surface.texts)
    assert "a thread of" in reply
    lengths = [int(n) for n in re.findall(r"_Post \d+ — (\d+)/280_", reply)]
    assert len(lengths) >= 4 and max(lengths) <= 280


async def test_bad_draft_arguments_are_explained(make_engine: EngineFactory) -> None:
    engine = await make_engine()
    surface = RecordingSurface()
    await engine.handle(event("/draft myspace hello"), surface)
    targets = "x, bluesky, mastodon, discord, telegram, linkedin, generic"
    assert surface.last == f"target must be one of: {targets}."
    await engine.handle(event("/draft x variants=7 hello"), surface)
    assert surface.last == "variants must be between 1 and 3."
    await engine.handle(event("/draft x"), surface)
    assert surface.last.startswith("/draft needs prompt.")
