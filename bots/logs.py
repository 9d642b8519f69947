"""Logging for every `herald` command: plain lines for people, JSON for collectors.

`HERALD_LOG_FORMAT=json` writes one JSON object per line with the fields the
engine attaches (platform, conversation, event id, outcome). Whatever the
format, every secret-typed setting (wherever it is declared: the core's, a
platform's) is masked in every line, tracebacks included: HTTP client
libraries put bot tokens in the URLs they log.

Every record stays one line whatever it quotes: the text format escapes control
characters (a newline in a chat name becomes `\\n`, ESC `\\x1b`) in the whole
line, message and fields alike; tracebacks keep their line breaks (their other
controls are escaped). JSON escapes them by itself. Masking also finds secrets
written escaped (by this escaping or JSON's), so escaping never reveals one.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType, TracebackType

from pythonjsonlogger.json import JsonFormatter

from bots.config import Config

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
#: libraries that log every request (with its URL, which may hold a token) at INFO
CHATTY = (
    "httpx",
    "httpcore",
    "aiohttp.access",
    "apscheduler",
    "oauthlib",
    # at DEBUG they write whole updates and gateway events, people's messages included
    # (and with them what someone types to `/account add` in a DM)
    "telegram",
    "discord.gateway",
    "discord.http",
)
#: libraries that warn on every retry; Herald logs the outcome once (herald.model)
RETRYING = ("huggingface_hub",)

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


def _escapes(keep: str = "") -> Mapping[int, str]:
    """How each control character (C0, DEL, C1, line and paragraph separators) is written."""
    codes = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return MappingProxyType(
        {
            c: named.get(chr(c)) or (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
            for c in codes
            if chr(c) not in keep
        }
    )


_IN_LINE = _escapes()
_IN_TRACEBACK = _escapes(keep="\n")


def escape_controls(text: str) -> str:
    """`text` on one line: control characters written as escapes (`\\n`, `\\x1b`)."""
    return text.translate(_IN_LINE)


class OneLineFormatter(logging.Formatter):
    """Text records that cannot forge lines (a name holding a newline, a terminal
    escape in model output); tracebacks keep their line breaks."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:
        return super().formatException(ei).translate(_IN_TRACEBACK)

    def formatStack(self, stack_info: str) -> str:
        return super().formatStack(stack_info).translate(_IN_TRACEBACK)


def _written_forms(secret: str) -> set[str]:
    """A secret as it may appear in a line: raw, escaped here, or escaped by JSON."""
    return {
        secret,
        escape_controls(secret),
        secret.translate(_IN_TRACEBACK),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


class Redacting(logging.Formatter):
    """Formats with `inner`, then masks every secret, in every form it may be written."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        forms = {form for s in secrets if len(s) >= 4 for form in _written_forms(s)}
        self._secrets = sorted(forms, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text


def setup_logging(config: Config, level: str | None = None) -> None:
    """Configure the root logger once for this process (stderr)."""
    settings = config.core
    if settings.log_format == "json":
        inner: logging.Formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    else:
        inner = OneLineFormatter(TEXT_FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Redacting(inner, config.secrets()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
    logging.captureWarnings(True)  # Python warnings become log lines (JSON too)
    quiet_libraries(root.level)


def quiet_libraries(level: int) -> None:
    """Libraries that log too much, or what must not be logged, speak from WARNING
    (those that warn on every retry, from ERROR), whatever Herald's own `level`."""
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, level))
    for name in RETRYING:
        logging.getLogger(name).setLevel(max(logging.ERROR, level))
