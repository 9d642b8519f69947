"""Logs that cannot be forged or made to leak: every text record stays one line
whatever it quotes, tracebacks keep their lines, and secrets are masked in every
form they may be written (raw, escaped, JSON-escaped)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bots.config import load_config
from bots.logs import setup_logging
from tests.emulators.tgi import TGIEmulator
from tests.test_console import run_herald

#: the start of every record in the text format
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
FORGED = "1999-01-01 00:00:00,000 ERROR herald.engine: forged"

Logged = Callable[..., str]


@pytest.fixture
def logged(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Logged]:
    """`logged(fmt, log, **env)`: what `log(logger)` wrote on stderr with Herald's logging
    set up from `env` (only), in format `fmt`; the root logger is restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def run(fmt: str, log: Callable[[logging.Logger], None], **env: str) -> str:
        for name in [name for name in os.environ if name.startswith("HERALD_")]:
            monkeypatch.delenv(name)
        for name, value in {"HERALD_LOG_FORMAT": fmt, **env}.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        setup_logging(load_config(env_file=None))
        log(logging.getLogger("herald.test"))
        return capsys.readouterr().err

    yield run
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def test_a_text_record_stays_one_line(logged: Logged) -> None:
    err = logged(
        "text",
        lambda log: log.warning(
            "event conv=%s user=%s", f"console:team\n{FORGED}", "ada\r\x1b[2K\x1b]0;x\x07\x9b\u2028"
        ),
    )
    assert len(err.splitlines()) == 1 and RECORD_START.match(err), err
    assert "conv=console:team\\n1999-01-01" in err
    assert "user=ada\\r\\x1b[2K\\x1b]0;x\\x07\\x9b\\u2028" in err


def test_a_traceback_keeps_its_lines_but_not_its_escapes(logged: Logged) -> None:
    def fail(log: logging.Logger) -> None:
        try:
            raise ValueError("bad \x1b[31mname")
        except ValueError:
            log.exception("handling %s failed", f"e1\n{FORGED}")

    lines = logged("text", fail).splitlines()
    assert lines[0].endswith("handling e1\\n1999-01-01 00:00:00,000 ERROR herald.engine: forged failed")
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: bad \\x1b[31mname"
    assert [line for line in lines if RECORD_START.match(line)] == lines[:1]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_masked_however_they_are_written(logged: Logged, fmt: str) -> None:
    """A secret holding characters that the format escapes is still masked."""
    secret = 'sk-"quoted"\\slash\x1bescape'
    err = logged(
        fmt,
        lambda log: log.warning("calling %s with %s", "https://api.example", secret),
        HERALD_LLM_API_KEY=secret,
    )
    assert err.count("***") == 1, err
    for form in ("quoted", json.dumps(secret), secret):
        assert form not in err
    if fmt == "json":
        assert json.loads(err)["message"] == "calling https://api.example with ***"


async def test_a_chat_name_cannot_forge_a_log_line(
    tmp_path: Path, tgi: TGIEmulator, redis_url: str, prefix: str
) -> None:
    """The real console, logging at INFO: the chat's name is in the engine's event line."""
    code, out, err = await run_herald(
        ["console", "--verbose", "--chat", f"team\n{FORGED}"],
        "hello\n",
        tmp_path,
        HERALD_TGI_URL=tgi.url,
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_PREFIX=prefix,
    )
    assert code == 0, err
    assert out == "You said: hello\n"
    assert "conv=console:team\\n1999-01-01 00:00:00,000 ERROR herald.engine: forged:-" in err
    assert not [line for line in err.splitlines() if "forged" in line and line.startswith("1999-01-01")]
