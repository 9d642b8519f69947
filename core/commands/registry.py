"""Commands as platform-neutral specs with typed, validated arguments.

An adapter offers each `CommandSpec` natively (Telegram's command menu, Discord
application commands with typed options, `/name args` in the terminal) and
hands the raw call back; `CommandRegistry.parse` validates it in one place.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.platform import BUTTON_PREFIX, CommandCall

if TYPE_CHECKING:
    from core.chat.engine import CommandContext

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_WORD = re.compile(r'\w+="(?P<quoted>[^"]*)"|\S+')
_COMMAND_TEXT = re.compile(r"^/([A-Za-z][A-Za-z0-9_-]{0,31})(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?$", re.S)


class ArgType(enum.Enum):
    TEXT = "text"
    INTEGER = "integer"
    CHOICE = "choice"


@dataclass(frozen=True, slots=True)
class ArgSpec:
    name: str
    description: str
    type: ArgType = ArgType.TEXT
    required: bool = False
    choices: tuple[str, ...] = ()
    min_value: int | None = None
    max_value: int | None = None
    max_length: int = 4000
    #: in text form given as `name=value` (e.g. `tone=witty`), never by position
    keyword_only: bool = False


Handler = Callable[["CommandContext", dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str
    description: str
    handler: Handler
    args: tuple[ArgSpec, ...] = ()
    #: counts against the user's rate limit and quota (it asks the model)
    generates: bool = False
    #: takes the conversation's turn (waits for an answer in progress)
    needs_turn: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"bad command name {self.name!r}")

    @property
    def usage(self) -> str:
        parts = [f"/{self.name}"]
        for arg in self.args:
            label = "|".join(arg.choices) if arg.choices else arg.name
            if arg.keyword_only:
                label = f"{arg.name}=…"
            parts.append(f"<{label}>" if arg.required else f"[{label}]")
        return " ".join(parts)


class CommandError(Exception):
    """The call is wrong; the message is for the user."""


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    spec: CommandSpec
    args: dict[str, Any] = field(default_factory=dict)


def parse_command_text(text: str, bot_username: str | None = None) -> CommandCall | None:
    """`/name@bot args` → CommandCall; None when the text is not a command for us."""
    match = _COMMAND_TEXT.match(text.strip())
    if match is None:
        return None
    name, target, rest = match.groups()
    if target and bot_username and target.lower() != bot_username.lower():
        return None
    return CommandCall(name=name.lower(), raw_args=(rest or "").strip() or None)


def clicked_command(data: str) -> CommandCall | None:
    """The command a clicked `Button` carries (the data the platform sent back), or
    None for buttons that are not Herald's command buttons."""
    if not data.startswith(BUTTON_PREFIX):
        return None
    return parse_command_text("/" + data.removeprefix(BUTTON_PREFIX))


class CommandRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}

    def add(self, spec: CommandSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"command {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def __iter__(self) -> Iterator[CommandSpec]:
        return iter(self._specs.values())

    def get(self, name: str) -> CommandSpec | None:
        return self._specs.get(name)

    def parse(self, call: CommandCall) -> ParsedCommand:
        spec = self._specs.get(call.name)
        if spec is None:
            raise CommandError(f"I don't know /{call.name}. Try /help.")
        if call.options is not None:
            raw = dict(call.options)
        else:
            raw = _split_positional(spec, call.raw_args or "")
        args: dict[str, Any] = {}
        for arg in spec.args:
            value = raw.pop(arg.name, None)
            if value is None or value == "":
                if arg.required:
                    raise CommandError(f"/{spec.name} needs {arg.name}. Usage: {spec.usage}")
                continue
            args[arg.name] = _convert(spec, arg, value)
        if raw:
            raise CommandError(f"/{spec.name} got unexpected {', '.join(raw)}. Usage: {spec.usage}")
        return ParsedCommand(spec, args)


def _split_positional(spec: CommandSpec, text: str) -> dict[str, object]:
    """`name=value` (or `name="a few words"`) words set keyword-only arguments wherever
    they stand; the other words fill the positional arguments in order, and the last
    positional one takes the rest of the text as written (line breaks included)."""
    keyword = {arg.name for arg in spec.args if arg.keyword_only}
    values: dict[str, object] = {}
    kept: list[str] = []
    last = 0
    for word in _WORD.finditer(text):
        name, sep, value = word.group().partition("=")
        if sep and name in keyword and name not in values:
            values[name] = word["quoted"] if word["quoted"] is not None else value
            kept.append(text[last : word.start()])
            last = word.end()
    rest = "".join(kept) + text[last:]
    positional = [arg for arg in spec.args if not arg.keyword_only]
    words = list(re.finditer(r"\S+", rest))
    while words and len(positional) > 1:
        values[positional.pop(0).name] = words.pop(0).group()
    if words:
        remainder = rest[words[0].start() :].strip()
        values[positional[0].name if positional else "extra words"] = remainder
    return values


def _convert(spec: CommandSpec, arg: ArgSpec, value: object) -> object:
    if arg.type is ArgType.INTEGER:
        try:
            number = int(str(value))
        except ValueError:
            raise CommandError(f"{arg.name} must be a whole number. Usage: {spec.usage}") from None
        if (arg.min_value is not None and number < arg.min_value) or (
            arg.max_value is not None and number > arg.max_value
        ):
            raise CommandError(f"{arg.name} must be between {arg.min_value} and {arg.max_value}.")
        return number
    text = str(value).strip()
    if arg.type is ArgType.CHOICE:
        choice = text.lower()
        if choice not in arg.choices:
            raise CommandError(f"{arg.name} must be one of: {', '.join(arg.choices)}.")
        return choice
    if len(text) > arg.max_length:
        raise CommandError(f"{arg.name} is too long ({len(text)} characters, at most {arg.max_length}).")
    return text
