"""The command registry: typed arguments, subcommands typed as words or chosen as
options, and the commands that buttons carry."""

from __future__ import annotations

from typing import Any

import pytest

from core.commands.context import CommandContext
from core.commands.registry import (
    ArgSpec,
    ArgType,
    CommandError,
    CommandRegistry,
    CommandSpec,
    clicked_command,
    parse_command_text,
    usage,
)
from core.platform import Button, CommandCall


async def _noop(ctx: CommandContext, args: dict[str, Any]) -> None:
    return None


def registry() -> CommandRegistry:
    registry = CommandRegistry()
    registry.add(
        CommandSpec(
            "post",
            "Posts",
            subcommands=(
                CommandSpec(
                    "add",
                    "Add one",
                    _noop,
                    args=(
                        ArgSpec("text", "What", required=True),
                        ArgSpec("when", "When", required=True, keyword_only=True),
                        ArgSpec("count", "How many", type=ArgType.INTEGER, min_value=1, keyword_only=True),
                    ),
                ),
                CommandSpec(
                    "approve", "Approve", _noop, args=(ArgSpec("id", "Id", required=True),), decides=True
                ),
                CommandSpec(
                    "edit",
                    "Edit",
                    _noop,
                    args=(ArgSpec("id", "Id", required=True), ArgSpec("text", "Text")),
                    decides=True,
                ),
            ),
        )
    )
    return registry


def parse(text: str) -> tuple[str, dict[str, Any]]:
    call = parse_command_text(text)
    assert call is not None
    parsed = registry().parse(call)
    return parsed.spec.name, parsed.args


def test_a_typed_subcommand_is_its_first_word() -> None:
    assert parse('/post add when="every day" count=2 hello\nworld') == (
        "add",
        {"text": "hello\nworld", "when": "every day", "count": 2},
    )
    # a subcommand without keyword options takes every word as it stands
    assert parse("/post edit 3fa2 new text with tz=Mars when=never") == (
        "edit",
        {"id": "3fa2", "text": "new text with tz=Mars when=never"},
    )


def test_a_chosen_subcommand_brings_its_own_options() -> None:
    call = CommandCall("post", subcommand="add", options={"text": "hi", "when": "daily", "count": 3})
    parsed = registry().parse(call)
    assert (parsed.spec.name, parsed.args, parsed.parent and parsed.parent.name) == (
        "add",
        {"text": "hi", "when": "daily", "count": 3},
        "post",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("/post", "/post takes one of: add, approve, edit. /help post explains them."),
        ("/post remove 1", "There is no /post remove. /post takes one of: add, approve, edit."),
        ("/post add", "Usage: /post add <text> <when=…> [count=…]"),
        ("/post add hello", "/post add needs when. Usage: /post add <text> <when=…> [count=…]"),
        ("/post add when=now count=0 hi", "count must be at least 1."),
        ("/post approve", "/post approve needs id. Usage: /post approve <id>"),
    ],
)
def test_wrong_calls_are_explained(text: str, message: str) -> None:
    call = parse_command_text(text)
    assert call is not None
    with pytest.raises(CommandError) as refused:
        registry().parse(call)
    assert str(refused.value).startswith(message)


def test_usage_and_what_decides_a_message() -> None:
    commands = registry()
    post = commands.get("post")
    assert post is not None and usage(post) == "/post add|approve|edit …"
    assert commands.decides(CommandCall("post", raw_args="approve 3fa2"))
    assert not commands.decides(CommandCall("post", raw_args="add when=now hi"))
    assert not commands.decides(CommandCall("nope"))


def test_buttons_carry_their_commands_and_old_approval_buttons_still_work() -> None:
    button = Button("✅ Approve", "schedule approve 3fa2c1d0")
    assert clicked_command(button.data) == CommandCall("schedule", raw_args="approve 3fa2c1d0")
    # approval messages sent before approvals were command buttons carry these
    assert clicked_command("herald:reject:3fa2c1d0") == CommandCall(
        "schedule", subcommand="reject", options={"id": "3fa2c1d0"}
    )
    assert clicked_command("herald:delete:3fa2c1d0") is None
    assert clicked_command("something else") is None
    with pytest.raises(ValueError, match="too long"):
        Button("x", "schedule approve " + "x" * 60)
