"""Herald's whole configuration: the core's settings and every registered platform's,
read together so that one message names every problem at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.platform import Platform
from adapters.registry import PLATFORMS
from core.config import ConfigError, HeraldSettings, Settings, read_settings, secret_values


@dataclass(frozen=True, slots=True)
class Config:
    core: Settings
    #: each platform's own settings, by platform name
    platforms: Mapping[str, HeraldSettings]

    def secrets(self) -> list[str]:
        """Every secret-typed setting's value, wherever it is declared (logs mask them)."""
        return secret_values(self.core, *self.platforms.values())


def load_config(
    env_file: str | Path | None = ".env",
    platforms: Sequence[Platform[Any]] = PLATFORMS,
    **core_overrides: Any,
) -> Config:
    problems: list[str] = []
    core: Settings | None = None
    found: dict[str, HeraldSettings] = {}
    try:
        core = read_settings(Settings, env_file, **core_overrides)
    except ConfigError as exc:
        problems += exc.problems
    for platform in platforms:
        try:
            found[platform.name] = read_settings(platform.settings, env_file)
        except ConfigError as exc:
            problems += exc.problems
    if problems or core is None:
        raise ConfigError(problems)
    return Config(core, found)
