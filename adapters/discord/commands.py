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

from core.commands.registry import ArgSpec, ArgType, CommandSpec

STRING, INTEGER = 3, 4
CHAT_INPUT = 1


def _option(arg: ArgSpec) -> dict[str, Any]:
    option: dict[str, Any] = {
        "type": INTEGER if arg.type is ArgType.INTEGER else STRING,
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


def command_payload(specs: Iterable[CommandSpec]) -> list[dict[str, Any]]:
    """Bulk-overwrite body: one chat-input command per spec, typed options, choices."""
    return [
        {
            "type": CHAT_INPUT,
            "name": spec.name,
            "description": spec.description[:100],
            # Discord wants required options first
            "options": [_option(a) for a in sorted(spec.args, key=lambda a: not a.required)],
        }
        for spec in specs
    ]


def digest(payload: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
