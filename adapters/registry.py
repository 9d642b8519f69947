"""The platforms Herald runs: one line per adapter package (see `adapters.platform`)."""

from __future__ import annotations

from typing import Any

from adapters.discord.platform import DISCORD
from adapters.platform import Platform
from adapters.telegram.platform import TELEGRAM

PLATFORMS: tuple[Platform[Any], ...] = (TELEGRAM, DISCORD)
