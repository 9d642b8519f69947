"""The `herald` command run as a real process: console scripted end to end, doctor,
configuration errors, and memory across two runs on the embedded Redis; bad input
(invalid UTF-8, terminal escapes) and stopping an answer with `/cancel` or Ctrl-C
while it streams, piped and on a real terminal (a pty)."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import sys
from pathlib import Path

from tests.emulators.mastodon import MastodonEmulator
from tests.emulators.telegram import TelegramEmulator
from tests.emulators.tgi import TGIEmulator, default_responder


def herald_command() -> list[str]:
    script = Path(sys.executable).with_name("herald")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bots"]


def herald_env(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    clean.update(env)
    return clean


async def run_herald(args: list[str], stdin: str | bytes, cwd: Path, **env: str) -> tuple[int, str, str]:
    clean = herald_env(**env)
    proc = await asyncio.create_subprocess_exec(
        *herald_command(),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env=clean,
    )
    data = stdin if isinstance(stdin, bytes) else stdin.encode()
    out, err = await asyncio.wait_for(proc.communicate(data), timeout=60)
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


async def test_doctor_checks_the_installs_social_accounts(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str
) -> None:
    async with MastodonEmulator() as mastodon:
        mastodon.add_account("team", "token-1")
        common = {
            "HERALD_TGI_URL": tgi.url,
            "HERALD_REDIS_URL": redis_url,
            "HERALD_MASTODON_URL": mastodon.url,
        }
        code, out, err = await run_herald(["doctor"], "", tmp_path, **common, HERALD_MASTODON_TOKEN="token-1")
        assert code == 0, out + err
        assert "Mastodon: OK, publishing as @team@social.example" in out
        assert "Social accounts of chats: off (no HERALD_SECRET_KEY)" in out
        code, out, err = await run_herald(["doctor"], "", tmp_path, **common, HERALD_MASTODON_TOKEN="wrong")
        assert code == 1 and "Mastodon: FAILED — " in out
        assert "wrong" not in out + err


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


async def test_invalid_utf8_input_is_replaced_not_a_failure(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    code, out, err = await run_herald(
        ["console"],
        b"caf\xc3\xa9 \xff\xfe ok\nmy name is Ada\n",
        tmp_path,
        HERALD_TGI_URL=tgi.url,
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
    )
    assert code == 0, err
    assert out.splitlines() == ["You said: café \ufffd\ufffd ok", "You said: my name is Ada"]
    assert err == ""


async def test_console_prints_no_control_characters(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    """Escape sequences from the model, or quoted back from what a user set, never
    reach the terminal; newlines and tabs do."""
    tgi.responder = lambda messages: (
        "red \x1b[31mALERT\x1b[0m title\x1b]0;pwned\x07 bell\x07 back\x08\x08 fake\rreal "
        "c1\x9b2J del\x7f tab\tend\r\nnext line"
    )
    code, out, err = await run_herald(
        ["console"],
        "hello\n/persona set evil\x1b[2J\x1b]0;x\x07 persona\n/persona show\n",
        tmp_path,
        HERALD_TGI_URL=tgi.url,
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
    )
    assert code == 0, err
    assert out.splitlines() == [
        "red [31mALERT[0m title]0;pwned bell back fakereal c12J del tab\tend",
        "next line",
        "Persona set for this chat.",
        "Current persona: evil[2J]0;x persona",
    ]
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f]", out)


def long_answers(messages: list[dict[str, str]]) -> str:
    """2000 words for "talk a lot" (cut at 512 tokens, the default limit), else the usual."""
    last = [m.get("content", "") for m in messages if m.get("role") == "user"][-1]
    if "talk a lot" in last:
        return " ".join(f"w{i}" for i in range(2000))
    return default_responder(messages)


#: how long a live console may take to print what a test waits for (a busy machine)
EXPECT_WITHIN = 40.0


class Printed:
    """Everything a process printed so far, as it arrives; `expect` waits for a text."""

    def __init__(self) -> None:
        self._data = bytearray()
        self.ended = False
        self._arrived = asyncio.Event()

    @property
    def text(self) -> str:
        return self._data.decode(errors="replace")

    def add(self, chunk: bytes) -> None:
        self._data += chunk
        self.ended = self.ended or not chunk
        self._arrived.set()

    async def expect(self, wanted: str, *, after: int = 0) -> int:
        """Wait until `wanted` is printed past `after`; returns where it ends."""
        try:
            async with asyncio.timeout(EXPECT_WITHIN):
                while (at := self.text.find(wanted, after)) < 0:
                    assert not self.ended, f"{wanted!r} never printed: {self.text!r}"
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(f"{wanted!r} not printed in {EXPECT_WITHIN} s: {self.text!r}") from None
        return at + len(wanted)


async def read_into(stream: asyncio.StreamReader, printed: Printed) -> None:
    while chunk := await stream.read(4096):
        printed.add(chunk)
    printed.add(b"")


def watch_terminal(fd: int, printed: Printed) -> None:
    """Collect what is written on a pty's slave side, read from its master `fd`."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every slave side closed (the process ended)
            chunk = b""
        if not chunk:
            loop.remove_reader(fd)
        printed.add(chunk)

    loop.add_reader(fd, readable)


async def ended(proc: asyncio.subprocess.Process) -> int:
    try:
        return await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_scripted_cancel_stops_the_answer_above_it(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    """Piped, `/cancel` reaches the answer streaming for the line before it, and the
    lines after it are still answered in order."""
    tgi.responder = long_answers
    tgi.token_delay = 0.05  # 512 tokens: about 26 s unless stopped
    code, out, err = await run_herald(
        ["console"],
        "talk a lot\n/cancel\nmy name is Ada\n",
        tmp_path,
        HERALD_TGI_URL=tgi.url,
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "Stopping the current answer." in lines and "⏹️ Stopped." in lines, out
    stopped = lines.index("⏹️ Stopped.")
    assert lines[stopped - 1] == "" and lines[stopped - 2].startswith("w0")
    assert "w511" not in out  # it stopped long before the length limit
    assert lines[-1] == "You said: my name is Ada"


async def test_ctrl_c_stops_the_answer_and_the_console_goes_on(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    tgi.responder = long_answers
    tgi.token_delay = 0.05
    proc = await asyncio.create_subprocess_exec(
        *herald_command(),
        "console",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=herald_env(HERALD_TGI_URL=tgi.url, HERALD_REDIS_URL=redis_url, HERALD_REDIS_PREFIX=prefix),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    printed = Printed()
    reading = asyncio.create_task(read_into(proc.stdout, printed))
    try:
        proc.stdin.write(b"talk a lot\n")
        await proc.stdin.drain()
        await printed.expect("w0 w1 ")  # the answer is streaming
        proc.send_signal(signal.SIGINT)
        stopped = await printed.expect("⏹️ Stopped.\n")
        proc.stdin.write(b"my name is Ada\n")
        proc.stdin.close()  # end of input: the console ends once this is answered
        await printed.expect("You said: my name is Ada\n", after=stopped)
    finally:
        code = await ended(proc)
        await reading
    err = (await proc.stderr.read()).decode()
    assert code == 0, err
    assert "Stopping the current answer." in printed.text and "w511" not in printed.text
    assert "Traceback" not in err


async def test_terminal_takes_cancel_and_ctrl_c_while_answering(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    """On a terminal, a line typed while an answer streams is handled at once; Ctrl-C
    at the prompt, with nothing running, ends the console."""
    tgi.responder = long_answers
    tgi.token_delay = 0.05
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        *herald_command(),
        "console",
        stdin=slave,
        stdout=slave,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
        env=herald_env(HERALD_TGI_URL=tgi.url, HERALD_REDIS_URL=redis_url, HERALD_REDIS_PREFIX=prefix),
    )
    os.close(slave)
    printed = Printed()
    watch_terminal(master, printed)
    try:
        start = await printed.expect("› ")
        os.write(master, b"talk a lot\n")
        await printed.expect("w0 w1 ", after=start)
        os.write(master, b"/cancel\n")
        stopped = await printed.expect("⏹️ Stopped.")
        await printed.expect("› ", after=stopped)  # nothing runs any more: prompted again
        proc.send_signal(signal.SIGINT)
    finally:
        code = await ended(proc)
        asyncio.get_running_loop().remove_reader(master)
        os.close(master)
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    assert code == 0, err
    assert "Stopping the current answer." in printed.text and "w511" not in printed.text
    assert "Traceback" not in err
