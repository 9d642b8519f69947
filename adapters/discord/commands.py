"""The core's command registry as Discord application commands, and their digest.

Discord allows a couple of hundred command writes a day, so commands are
written only when asked (`herald discord sync-commands`) or when the digest of
the command set differs from the one last written (kept in Redis). Commands
are never removed at shutdown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from discord import AppCommandOptionType, AppCommandType

from core.commands.registry import ArgSpec, ArgType, CommandSpec


def _option(arg: ArgSpec) -> dict[str, Any]:
    kind = AppCommandOptionType.integer if arg.type is ArgType.INTEGER else AppCommandOptionType.string
    option: dict[str, Any] = {
        "type": kind.value,
        "name": arg.name,
        "description": arg.description[:100],
        "required": arg.required,
    }
    if arg.choices:
        option["choices"] = [{"name": c, "value": c} for c in arg.choices]
    if arg.type is ArgType.INTEGER:
        if arg.min_value is not None:
            option["min_value"] = arg.min_value
        if arg.max_value is not None:
            option["max_value"] = arg.max_value
    elif not arg.choices:
        option["max_length"] = min(arg.max_length, 6000)
    return option


def _options(spec: CommandSpec) -> list[dict[str, Any]]:
    """A spec's typed options (Discord wants required ones first), or its subcommands."""
    if spec.subcommands:
        return [
            {
                "type": AppCommandOptionType.subcommand.value,
                "name": sub.name,
                "description": sub.description[:100],
                "options": _options(sub),
            }
            for sub in spec.subcommands
        ]
    return [_option(a) for a in sorted(spec.args, key=lambda a: not a.required)]


def command_payload(specs: Iterable[CommandSpec]) -> list[dict[str, Any]]:
    """Bulk-overwrite body: one chat-input command per spec."""
    return [
        {
            "type": AppCommandType.chat_input.value,
            "name": spec.name,
            "description": spec.description[:100],
            "options": _options(spec),
        }
        for spec in specs
    ]


def digest(payload: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
