"""The built-in model (issue 12): real llama.cpp in Herald's model process, loading a
tiny random-weight GGUF written by the test (`tests/tiny_model.py`), streamed by
the real engine, the console, and `herald run` on the Telegram emulator; with the
model's own template and tokenizer, /cancel, JSON-schema grammar, context limits,
a corrupt file, a crashed process, and no process left behind."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import llama_cpp
import pytest

from bots.local_model.backend import BuiltInModel, LocalModelError
from bots.local_model.server import STREAM_CLOSED
from bots.runtime import build_llm
from core import messages
from core.chat.engine import Outcome
from core.llm.base import ChatMessage, Finished, GenerationParams, TextDelta
from core.llm.errors import ContextTooLong
from core.platform import ConversationKey
from core.posts.campaigns import SCHEMA, Campaign
from tests import test_operations
from tests.conftest import EngineFactory
from tests.emulators.hub import HubEmulator
from tests.emulators.telegram import TelegramEmulator
from tests.support import RecordingSurface, event
from tests.test_console import Printed, ended, herald_command, herald_env, read_into, run_herald
from tests.test_operations import ADA, Spawn
from tests.tiny_model import corrupt_copy, write_tiny_model

pytestmark = pytest.mark.timeout(120)

# `herald run` as a process, with the Telegram emulator (fixtures shared with test_operations)
spawn = test_operations.spawn
telegram = test_operations.telegram

CONV = ConversationKey("test", "c1", None)
SERVER_MODULE = "bots.local_model.server"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture(scope="session")
def vocab(tiny: Path) -> llama_cpp.Llama:
    """The test's own reading of the model's tokenizer, to check Herald's counts."""
    return llama_cpp.Llama(model_path=str(tiny), vocab_only=True, verbose=False)


def local(tiny: Path, **overrides: object) -> dict[str, object]:
    """Settings for the built-in model: no model server URL, the tiny model's file."""
    return {
        "tgi_url": None,
        "local_model": str(tiny),
        "local_context": 1024,
        "max_new_tokens": 32,
    } | overrides


async def until(check: Callable[[], bool], what: str, within: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {within} s: {what}")
        await asyncio.sleep(0.02)


def model_processes(model: Path) -> list[int]:
    """Pids of model processes serving `model` (read from /proc: no process is missed
    because it was started by a process that is gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if SERVER_MODULE.encode() in argv and str(model).encode() in argv:
            found.append(int(entry.name))
    return found


async def test_the_engine_answers_from_the_built_in_model(
    make_engine: EngineFactory, tiny: Path, vocab: llama_cpp.Llama
) -> None:
    engine = await make_engine(**local(tiny))
    info = engine.llm.info
    assert (info.model_id, info.max_total_tokens, info.max_concurrent_requests) == ("tiny.gguf", 1024, 1)

    surface = RecordingSurface()
    assert await engine.handle(event("hello there"), surface) is Outcome.ANSWERED
    [user, answer] = await engine.memory.history(CONV)
    assert (user.role, user.content, answer.role) == ("user", "hello there", "assistant")
    assert answer.content and answer.tokens > 0 and surface.texts

    # the model's own chat template, and the model's own count of what it will read
    prompt = await engine.llm.prepare(
        [ChatMessage("system", "be brief"), ChatMessage("user", "hi <|im_end|>")]
    )
    assert prompt.exact and prompt.rendered == (
        "<|im_start|>system\nbe brief<|im_end|>\n"
        "<|im_start|>user\nhi ‹|im_end|›<|im_end|>\n"  # the user's marker stays text
        "<|im_start|>assistant\n"
    )
    assert prompt.input_tokens == len(vocab.tokenize(prompt.rendered.encode(), add_bos=True, special=True))
    assert await engine.llm.count_tokens("hello world") == len(vocab.tokenize(b"hello world", add_bos=False))


async def test_draft_runs_on_the_built_in_model(make_engine: EngineFactory, tiny: Path) -> None:
    engine = await make_engine(**local(tiny, max_new_tokens=40))
    surface = RecordingSurface()
    assert await engine.handle(event("/draft x announce Herald 2.0"), surface) is Outcome.COMMAND
    assert surface.last.startswith("**Draft `") and "for X (Twitter)** — " in surface.last


async def test_tokens_stream_as_they_are_generated(make_engine: EngineFactory, tiny: Path) -> None:
    """Text comes as it is generated (what came since the last event, in one event);
    the end says how many tokens were generated."""
    engine = await make_engine(**local(tiny))
    prompt = await engine.llm.prepare([ChatMessage("user", "count")])
    events = [e async for e in engine.llm.stream(prompt, GenerationParams(max_new_tokens=200, seed=1))]
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) >= 2 and all(texts)
    finished = events[-1]
    assert isinstance(finished, Finished) and (finished.finish_reason, finished.generated_tokens) == (
        "length",
        200,
    )


async def test_cancel_stops_generation_between_tokens(
    make_engine: EngineFactory, tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The model process notices that Herald closed the stream and stops generating."""
    caplog.set_level(logging.DEBUG, logger="herald.model")
    engine = await make_engine(**local(tiny, local_context=8192, max_new_tokens=6000))
    surface = RecordingSurface()
    answering = asyncio.create_task(engine.handle(event("talk for a long time"), surface))
    await until(lambda: len(surface.last) > 40, "the answer is streaming")
    cancel = RecordingSurface()
    assert await engine.handle(event("/cancel"), cancel) is Outcome.COMMAND
    assert await answering is Outcome.STOPPED
    assert surface.last.endswith(messages.STOPPED)
    await until(lambda: STREAM_CLOSED in caplog.text, "the model process stopped generating")
    prompt = await engine.llm.prepare([ChatMessage("user", "and now?")])  # the model is free again
    events = [e async for e in engine.llm.stream(prompt, GenerationParams(max_new_tokens=3))]
    assert events[-1] == Finished("length", 3)


async def test_a_campaign_plan_is_held_to_its_json_schema_by_llama_cpp_grammar(
    make_engine: EngineFactory, tiny: Path
) -> None:
    """Even random weights write a plan that parses and validates against the
    campaign's schema (dates, the time pattern, the target enum, list lengths):
    llama.cpp's grammar allows nothing else."""
    engine = await make_engine(**local(tiny, local_context=4096))
    prompt = await engine.llm.prepare([ChatMessage("user", "plan a campaign")])
    for seed in range(3):
        params = GenerationParams(max_new_tokens=3000, json_schema=SCHEMA, seed=seed, temperature=1.0)
        events = [e async for e in engine.llm.stream(prompt, params)]
        assert not isinstance(events[-1], TextDelta) and events[-1].finish_reason == "stop"
        plan = Campaign.model_validate_json("".join(e.text for e in events if isinstance(e, TextDelta)))
        assert 1 <= len(plan.posts) <= 30 and 1 <= len(plan.key_messages) <= 6


async def test_campaign_runs_on_the_built_in_model(make_engine: EngineFactory, tiny: Path) -> None:
    """The whole command: a random model's plan is valid JSON, then checked like any
    model's (its dates and channels); the user gets a plan or a clear refusal."""
    engine = await make_engine(**local(tiny, local_context=4096))
    surface = RecordingSurface()
    assert await engine.handle(event("/campaign Herald 2.0 launch"), surface) is Outcome.COMMAND
    assert surface.texts and "Something went wrong" not in surface.last


async def test_a_long_conversation_never_overflows_the_context(
    make_engine: EngineFactory, tiny: Path
) -> None:
    """Counted with the model's own tokenizer, old turns are dropped before the prompt
    and the answer outgrow the model's context."""
    settings = local(tiny, local_context=1024, max_new_tokens=64, context_block_messages=2)
    engine = await make_engine(**settings)
    for turn in range(8):  # each exchange ~230 tokens (a byte-level vocabulary); ~3 fit
        surface = RecordingSurface()
        text = f"message {turn}: " + "tell me about the weather and the sea " * 4
        assert await engine.handle(event(text), surface) is Outcome.ANSWERED, surface.texts
    history = await engine.memory.history(CONV)
    assert len(history) == 16  # everything is remembered; only the prompt leaves old turns out


async def test_a_corrupt_model_file_ends_start_up_with_one_clear_message(
    make_engine: EngineFactory, tiny: Path, tmp_path: Path
) -> None:
    broken = corrupt_copy(tiny, tmp_path / "broken.gguf")
    with pytest.raises(LocalModelError) as caught:
        await make_engine(**local(broken))
    assert str(caught.value).startswith("The built-in model could not start: cannot load the model")
    assert model_processes(broken) == []


async def test_a_crashed_model_process_is_started_again(
    make_engine: EngineFactory, tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fault in llama.cpp kills its process, never the bot: the next answer comes
    from a new process at the same address."""
    engine = await make_engine(**local(tiny))
    [first] = model_processes(tiny)
    os.kill(first, signal.SIGKILL)
    await until(lambda: "the built-in model process exited" in caplog.text, "the bot noticed")
    surface = RecordingSurface()
    assert await engine.handle(event("still there?"), surface) is Outcome.ANSWERED
    assert await engine.llm.health()
    [second] = model_processes(tiny)
    assert second != first


async def test_the_console_answers_with_no_model_server(
    tmp_path: Path, tiny: Path, redis_url: str, prefix: str
) -> None:
    code, out, err = await run_herald(
        ["console"],
        "hello\n/help\n",
        tmp_path,
        HERALD_LOCAL_MODEL=str(tiny),
        HERALD_LOCAL_CONTEXT="1024",
        HERALD_MAX_NEW_TOKENS="16",
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].strip() and "Something went wrong" not in out
    assert any(line.startswith("/ask") for line in lines)  # /help answered after the model's answer
    assert model_processes(tiny) == []  # stopped with the console


async def test_doctor_names_the_built_in_model(tmp_path: Path, tiny: Path, redis_url: str) -> None:
    code, out, err = await run_herald(
        ["doctor"],
        "",
        tmp_path,
        HERALD_LOCAL_MODEL=str(tiny),
        HERALD_LOCAL_CONTEXT="1024",
        HERALD_LOCAL_THREADS="2",
        HERALD_REDIS_URL=redis_url,
    )
    assert code == 0, out + err
    assert f"  model: built-in (llama.cpp on this machine's CPU): {tiny}" in out
    assert "Model: OK — built-in llama.cpp, tiny.gguf" in out
    assert f"  file {tiny}" in out
    assert "  2 threads, context 1024 tokens, one answer at a time" in out
    assert model_processes(tiny) == []


async def test_herald_run_answers_on_telegram_and_leaves_nothing_behind(
    spawn: Spawn, telegram: TelegramEmulator, tiny: Path
) -> None:
    herald = await spawn(
        HERALD_TGI_URL="",
        HERALD_LOCAL_MODEL=str(tiny),
        HERALD_LOCAL_CONTEXT="1024",
        HERALD_MAX_NEW_TOKENS="24",
    )
    status, ready = await herald.ready()
    assert status == 200 and ready["checks"]["model"] == "ok"
    [child] = model_processes(tiny)
    chat = telegram.private_chat(ADA["id"])
    telegram.send_user_message(chat, ADA, "hello from Telegram")
    await telegram.wait_until(lambda: bool(telegram.messages_in(ADA["id"])), 60)
    herald.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await herald.proc.wait() == 0, herald.log.read_text()
    await until(lambda: model_processes(tiny) == [], "the model process is gone")
    assert child not in model_processes(tiny)


async def test_a_killed_herald_takes_its_model_process_with_it(spawn: Spawn, tiny: Path) -> None:
    herald = await spawn(HERALD_TGI_URL="", HERALD_LOCAL_MODEL=str(tiny), HERALD_LOCAL_CONTEXT="1024")
    assert len(model_processes(tiny)) == 1
    herald.proc.kill()
    await herald.proc.wait()
    await until(lambda: model_processes(tiny) == [], "the model process died with Herald")


async def test_first_use_downloads_the_model_once_then_uses_the_cache(
    tmp_path: Path, tiny: Path, redis_url: str, prefix: str
) -> None:
    """`herald console` with a Hub model (the Hub's stand-in): one line saying what is
    downloaded, then an answer; the second run reads the cache and downloads nothing."""
    async with HubEmulator() as hub:
        hub.add_repo("herald-test/tiny-GGUF", {"tiny.gguf": await asyncio.to_thread(tiny.read_bytes)})
        env = {
            "HERALD_LOCAL_MODEL": "herald-test/tiny-GGUF/tiny.gguf",
            "HERALD_LOCAL_CONTEXT": "1024",
            "HERALD_MAX_NEW_TOKENS": "16",
            "HERALD_REDIS_URL": redis_url,
            "HERALD_REDIS_PREFIX": prefix,
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_TOKEN": "hf_test_token_not_real",
        }
        code, out, err = await run_herald(["console"], "hello\n", tmp_path, **env)
        assert code == 0, err
        [line] = [ln for ln in err.splitlines() if "Downloading the built-in model" in ln]
        assert "tiny.gguf from herald-test/tiny-GGUF" in line and "licence apache-2.0" in line
        assert "set HERALD_TGI_URL" in line
        assert out.strip() and len(hub.file_requests()) == 1
        code, out, err = await run_herald(["console"], "hello again\n", tmp_path, **env)
        assert code == 0, err
        assert "Downloading" not in err and out.strip()
        assert len(hub.file_requests()) == 1  # the cache, not the Hub


async def test_an_unreachable_hub_ends_start_up_with_what_to_do(
    tmp_path: Path, redis_url: str, unused_tcp_port: int
) -> None:
    code, _, err = await run_herald(
        ["console"],
        "hello\n",
        tmp_path,
        HERALD_LOCAL_MODEL="herald-test/tiny-GGUF/tiny.gguf",
        HERALD_REDIS_URL=redis_url,
        HF_ENDPOINT=f"http://127.0.0.1:{unused_tcp_port}",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_ETAG_TIMEOUT="1",
    )
    assert code != 0
    assert "Traceback" not in err
    assert "Herald cannot start: The built-in model is unavailable: cannot reach the Hugging Face Hub" in err
    assert "Set HERALD_LOCAL_MODEL to a .gguf file you have, or HERALD_TGI_URL to a model server." in err


async def test_an_installation_without_llama_cpp_says_how_to_get_it(
    make_settings: Callable[..., object], tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    llm = build_llm(make_settings(**local(tiny)))  # type: ignore[arg-type]
    try:
        with pytest.raises(LocalModelError) as caught:
            await llm.start()
    finally:
        await llm.close()
    assert str(caught.value) == (
        "The built-in model needs llama-cpp-python: install Herald with `pip install 'herald[local]'` "
        "(./dev does), or set HERALD_TGI_URL to a model server"
    )


async def test_ctrl_c_stops_the_answer_not_the_model_and_nothing_is_left(
    tmp_path: Path, tiny: Path, redis_url: str, prefix: str
) -> None:
    """The console's Ctrl-C stops the answer on screen; the model process (in its own
    session) never sees it, serves the next message, and ends with the console."""
    proc = await asyncio.create_subprocess_exec(
        *herald_command(),
        "console",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=herald_env(
            HERALD_LOCAL_MODEL=str(tiny),
            HERALD_LOCAL_CONTEXT="8192",
            HERALD_MAX_NEW_TOKENS="6000",
            HERALD_REDIS_URL=redis_url,
            HERALD_REDIS_PREFIX=prefix,
        ),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    printed = Printed()
    reading = asyncio.create_task(read_into(proc.stdout, printed))
    try:
        proc.stdin.write(b"talk a lot\n")
        await proc.stdin.drain()
        await until(lambda: len(printed.text) > 40, "the answer is streaming")
        [model] = model_processes(tiny)
        proc.send_signal(signal.SIGINT)
        stopped = await printed.expect("⏹️ Stopped.\n")
        assert model_processes(tiny) == [model]  # the same process, untouched
        proc.stdin.write(b"/help\n")
        proc.stdin.close()  # end of input: the console ends once this is answered
        await printed.expect("/ask", after=stopped)
    finally:
        code = await ended(proc)
        await reading
    err = (await proc.stderr.read()).decode()
    assert code == 0, err
    assert "Traceback" not in err
    assert model_processes(tiny) == []


async def test_only_herald_may_use_its_model_process(
    make_settings: Callable[..., object], tiny: Path
) -> None:
    """The model listens on loopback, where any local user could reach it: every
    route but /health wants the key Herald made for this start."""
    llm = build_llm(make_settings(**local(tiny)))  # type: ignore[arg-type]
    assert isinstance(llm, BuiltInModel)
    await llm.start()
    try:
        async with aiohttp.ClientSession() as http:
            for method, path in [("GET", "/props"), ("POST", "/tokenize"), ("POST", "/completion")]:
                async with http.request(method, llm.process.url + path, json={"content": "x"}) as response:
                    assert response.status == 401, path
                    assert (await response.json())["error"]["type"] == "authentication_error"
            async with http.get(llm.process.url + "/health") as response:
                assert response.status == 200
    finally:
        await llm.close()


async def test_a_prompt_past_the_context_is_a_typed_error(make_engine: EngineFactory, tiny: Path) -> None:
    """The engine never sends one (its budget is counted exactly); a caller that does
    gets llama.cpp's refusal as `ContextTooLong`, with the numbers."""
    engine = await make_engine(**local(tiny, local_context=512))
    prompt = await engine.llm.prepare([ChatMessage("user", "x " * 400)])
    assert prompt.input_tokens > 512
    with pytest.raises(ContextTooLong) as caught:
        async for _ in engine.llm.stream(prompt, GenerationParams(max_new_tokens=8)):
            pass
    assert (caught.value.given, caught.value.limit) == (prompt.input_tokens, 512)
