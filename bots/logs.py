"""Logging for every `herald` command: plain lines for people, JSON for collectors.

`HERALD_LOG_FORMAT=json` writes one JSON object per line with the fields the
engine attaches (platform, conversation, event id, outcome). Whatever the
format, every secret-typed setting (wherever it is declared: the core's, a
platform's) is masked in every line, tracebacks included: HTTP client
libraries put bot tokens in the URLs they log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from pythonjsonlogger.json import JsonFormatter

from bots.config import Config

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MASK = "***"
#: libraries that log every request (with its URL, which may hold a token) at INFO
CHATTY = ("httpx", "httpcore", "aiohttp.access", "apscheduler")


class Redacting(logging.Formatter):
    """Formats with `inner`, then masks every secret."""

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self._inner = inner
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

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
        inner = logging.Formatter(TEXT_FORMAT)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Redacting(inner, config.secrets()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.log_level)
    logging.captureWarnings(True)  # Python warnings become log lines (JSON too)
    for name in CHATTY:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
