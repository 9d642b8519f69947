"""The `herald` command run as a real process: console scripted end to end, doctor,
configuration errors, and memory across two runs on the embedded Redis."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import TGIEmulator


def herald_command() -> list[str]:
    script = Path(sys.executable).with_name("herald")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bots"]


async def run_herald(args: list[str], stdin: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    clean.update(env)
    proc = await asyncio.create_subprocess_exec(
        *herald_command(),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=clean,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_scripted_console_with_commands(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    script = "my name is Ada\nwhat is my name?\n/persona set pirate\n/reset\nwhat is my name?\n"
    code, out, err = await run_herald(
        ["console", "--user", "ada"],
        script,
        tmp_path,
        HERALD_TGI_URL=tgi.url,
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
    )
    assert code == 0, err
    assert out.splitlines() == [
        "You said: my name is Ada",
        "Your name is Ada.",
        "Persona set for this chat.",
        "Done — I've forgotten this conversation.",
        "I don't know your name yet.",
    ]
    assert "talk like a pirate" in tgi.prompts[-1]


async def test_memory_survives_two_runs_on_the_embedded_redis(tmp_path: Path, tgi: TGIEmulator) -> None:
    env = {"HERALD_TGI_URL": tgi.url, "HERALD_DATA_DIR": str(tmp_path / "data")}
    code, out, err = await run_herald(["console", "--chat", "team"], "my name is Grace\n", tmp_path, **env)
    assert code == 0, err
    assert out.strip() == "You said: my name is Grace"
    assert list((tmp_path / "data" / "redis").iterdir())  # data kept on disk
    code, out, err = await run_herald(["console", "--chat", "team"], "what is my name?\n", tmp_path, **env)
    assert code == 0, err
    assert out.strip() == "Your name is Grace."


async def test_bad_configuration_names_every_problem(tmp_path: Path) -> None:
    code, out, err = await run_herald(
        ["console"],
        "",
        tmp_path,
        HERALD_TOP_P="1.5",
        HERALD_TGI_URL="localhost",
        HERALD_ADMINS="alice",
    )
    assert code == 2
    assert "Traceback" not in err and out == ""
    for name in ("HERALD_TOP_P", "HERALD_TGI_URL", "HERALD_ADMINS"):
        assert name in err


async def test_env_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HERALD_MAX_NEW_TOKENS=lots\n")
    code, _, err = await run_herald(["doctor"], "", tmp_path)
    assert code == 2 and "HERALD_MAX_NEW_TOKENS" in err and "Traceback" not in err


async def test_unreachable_model_server_ends_start_clearly(
    tmp_path: Path, redis_url: str, prefix: str
) -> None:
    code, _, err = await run_herald(
        ["console"],
        "hello\n",
        tmp_path,
        HERALD_TGI_URL="http://127.0.0.1:9",
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
        HERALD_LLM_CONNECT_TIMEOUT="0.5",
    )
    assert code == 1
    assert "Cannot use the model server at http://127.0.0.1:9" in err
    assert "Traceback" not in err


async def test_doctor_reports_what_it_found(tmp_path: Path, tgi: TGIEmulator, redis_url: str) -> None:
    async with TelegramEmulator() as telegram:
        code, out, err = await run_herald(
            ["doctor"],
            "",
            tmp_path,
            HERALD_TGI_URL=tgi.url,
            HERALD_REDIS_URL=redis_url,
            HERALD_TELEGRAM_TOKEN=telegram.token,
            HERALD_TELEGRAM_API_URL=telegram.url,
        )
        assert code == 0, out + err
        assert "Redis: OK" in out
        assert "Model server: OK — herald/emulated-7b" in out
        assert "Telegram: OK — @HeraldBot, long polling, privacy mode on" in out
        assert "Discord: not configured (set HERALD_DISCORD_TOKEN to run it)" in out
        assert telegram.token not in out + err
        code, out, _ = await run_herald(
            ["doctor"],
            "",
            tmp_path,
            HERALD_TGI_URL=tgi.url,
            HERALD_REDIS_URL=redis_url,
            HERALD_TELEGRAM_TOKEN="123:wrong",
            HERALD_TELEGRAM_API_URL=telegram.url,
        )
        assert code == 1 and "Telegram: FAILED — the Bot API refused HERALD_TELEGRAM_TOKEN" in out
    tgi.healthy = False
    code, out, _ = await run_herald(
        ["doctor"], "", tmp_path, HERALD_TGI_URL=tgi.url, HERALD_REDIS_URL=redis_url
    )
    assert code == 1 and "UNHEALTHY" in out


async def test_console_continues_an_answer_cut_short(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    answers = iter([" ".join(f"w{i}" for i in range(1, 41)), "and that is the end."])
    tgi.responder = lambda messages: next(answers)
    code, out, err = await run_herald(
        ["console"],
        "count to forty\n/continue\n",
        tmp_path,
        HERALD_TGI_URL=tgi.url,
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
        HERALD_MAX_NEW_TOKENS="12",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("w1 w2 w3") and "w40" not in lines[0]
    assert lines[1:] == [
        "✂️ That answer reached my length limit and stops mid-way.",
        "",
        "/continue",
        "and that is the end.",
    ]
