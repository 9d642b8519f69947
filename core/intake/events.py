"""An `Inbound` as JSON, for the intake's streams: written by the replica that received
the event, read by whichever answers it (maybe another process, or a later version)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.platform import Author, CommandCall, Inbound, Posted


def inbound_data(event: Inbound) -> dict[str, Any]:
    author = event.author
    data: dict[str, Any] = {
        "platform": event.platform,
        "event_id": event.event_id,
        "chat_id": event.chat_id,
        "author": {
            "user_id": author.user_id,
            "name": author.display_name,
            "admin": author.is_chat_admin,
            "roles": sorted(author.roles),
        },
        "text": event.text,
        "addressed": event.addressed,
        "thread_id": event.thread_id,
        "private": event.is_private,
    }
    if event.command is not None:
        command = event.command
        data["command"] = {
            "name": command.name,
            "raw_args": command.raw_args,
            "options": dict(command.options) if command.options is not None else None,
            "subcommand": command.subcommand,
        }
    if event.posted is not None:
        posted = event.posted
        data["posted"] = {"id": posted.message_id, "at": posted.at, "reply_to": posted.reply_to}
    return data


def inbound_from_data(data: Mapping[str, Any]) -> Inbound:
    """The event; `ValueError` when `data` isn't one (damaged, or from elsewhere)."""
    try:
        author = data["author"]
        command = data.get("command")
        posted = data.get("posted")
        options = command.get("options") if command is not None else None
        return Inbound(
            platform=_text(data["platform"]),
            event_id=_text(data["event_id"]),
            chat_id=_text(data["chat_id"]),
            author=Author(
                _text(author["user_id"]),
                _text(author.get("name", "")),
                bool(author.get("admin", False)),
                frozenset(_text(role) for role in author.get("roles", ())),
            ),
            text=_text(data["text"]),
            addressed=bool(data["addressed"]),
            thread_id=_optional(data.get("thread_id")),
            is_private=bool(data.get("private", False)),
            command=CommandCall(
                _text(command["name"]),
                _optional(command.get("raw_args")),
                dict(options) if isinstance(options, Mapping) else None,
                _optional(command.get("subcommand")),
            )
            if command is not None
            else None,
            posted=Posted(_text(posted["id"]), float(posted["at"]), _optional(posted.get("reply_to")))
            if posted is not None
            else None,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an event: {exc!r}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _optional(value: Any) -> str | None:
    return None if value is None else _text(value)
