"""Commands as platform-neutral specs with typed, validated arguments.

An adapter offers each `CommandSpec` natively (Telegram's command menu, Discord
application commands with typed options and subcommands, `/name args` in the
terminal) and hands the raw call back; `CommandRegistry.parse` validates it in
one place. A command with subcommands (`/schedule add …`) is typed as its first
word in text, and chosen as a Discord subcommand.
"""

from __future__ import annotations

import difflib
import enum
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.platform import BUTTON_PREFIX, CommandCall

if TYPE_CHECKING:
    from core.commands.context import CommandContext

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_WORD = re.compile(r'\w+="(?P<quoted>[^"]*)"|\S+')
_COMMAND_TEXT = re.compile(r"^/([A-Za-z][A-Za-z0-9_-]{0,31})(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?$", re.S)
#: approval buttons sent before they became command buttons: `herald:<action>:<post id>`
_LEGACY_APPROVAL = re.compile(r"^herald:(approve|edit|regenerate|reject):(\w{1,40})$")


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
    """A command, or a group of subcommands (`subcommands`, then no handler or args)."""

    name: str
    description: str
    handler: Handler | None = None
    args: tuple[ArgSpec, ...] = ()
    #: counts against the user's rate limit and quota (it asks the model)
    generates: bool = False
    #: takes the conversation's turn (waits for an answer in progress)
    needs_turn: bool = False
    #: decides the message whose button runs it (approve, reject…): on a click, the
    #: outcome is shown on that message rather than as a new one
    decides: bool = False
    subcommands: tuple[CommandSpec, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"bad command name {self.name!r}")
        if (self.handler is None) == (not self.subcommands) or (self.subcommands and self.args):
            raise ValueError(f"/{self.name} needs either a handler (and args) or subcommands")

    def subcommand(self, name: str) -> CommandSpec | None:
        return next((sub for sub in self.subcommands if sub.name == name), None)


def path(spec: CommandSpec, parent: CommandSpec | None = None) -> str:
    """`/schedule add`: what a person types to run a command."""
    return f"/{parent.name} {spec.name}" if parent else f"/{spec.name}"


def usage(spec: CommandSpec, parent: CommandSpec | None = None) -> str:
    """`/schedule add <prompt> <when=…> [tz=…]`: how to type a command."""
    parts = [path(spec, parent)]
    if spec.subcommands:
        parts.append("|".join(sub.name for sub in spec.subcommands) + " …")
    for arg in spec.args:
        label = "|".join(arg.choices) if arg.choices else arg.name
        if arg.keyword_only:
            label = f"{arg.name}=…"
        parts.append(f"<{label}>" if arg.required else f"[{label}]")
    return " ".join(parts)


class CommandError(Exception):
    """The call is wrong; the message is for the user."""


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """A valid call: the spec that handles it (a subcommand's own), and its arguments."""

    spec: CommandSpec
    args: dict[str, Any] = field(default_factory=dict)
    parent: CommandSpec | None = None

    @property
    def handler(self) -> Handler:
        assert self.spec.handler is not None  # only specs with handlers are parsed
        return self.spec.handler


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
    None for buttons that are not Herald's. Approval buttons on messages sent before
    they became command buttons (`herald:approve:<post>`) still run their command."""
    legacy = _LEGACY_APPROVAL.match(data)
    if legacy is not None:
        action, post_id = legacy.groups()
        return CommandCall("schedule", subcommand=action, options={"id": post_id})
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

    def decides(self, call: CommandCall) -> bool:
        """Whether `call` would decide the message it was clicked on (see `CommandSpec`):
        what a platform must know before it acknowledges the click."""
        try:
            return self.parse(call).spec.decides
        except CommandError:
            return False

    def parse(self, call: CommandCall) -> ParsedCommand:
        spec = self._specs.get(call.name)
        if spec is None:
            raise CommandError(f"I don't know /{call.name}. Try /help.")
        if not spec.subcommands:
            return ParsedCommand(spec, _arguments(spec, None, call.options, call.raw_args))
        name, raw = call.subcommand, call.raw_args
        if name is None:  # typed: the first word names it
            first, _, rest = (raw or "").partition(" ")
            name, raw = first.strip().lower(), rest.strip() or None
        sub = spec.subcommand(name)
        if sub is None:
            choices = ", ".join(s.name for s in spec.subcommands)
            said = f"There is no /{spec.name} {name}. " if name else ""
            raise CommandError(
                f"{said}/{spec.name} takes one of: {choices}. /help {spec.name} explains them."
            )
        return ParsedCommand(sub, _arguments(sub, spec, call.options, raw), parent=spec)


def _arguments(
    spec: CommandSpec, parent: CommandSpec | None, options: Any, raw_args: str | None
) -> dict[str, Any]:
    """The typed arguments of one call; every problem is a `CommandError` for the user."""
    raw = dict(options) if options is not None else _split_positional(spec, raw_args or "")
    how = usage(spec, parent)
    required = [arg for arg in spec.args if arg.required]
    if len(required) > 1 and not any(value not in (None, "") for value in raw.values()):
        raise CommandError(f"Usage: {how}")  # given nothing at all: how to use it
    args: dict[str, Any] = {}
    for arg in spec.args:
        value = raw.pop(arg.name, None)
        if value is None or value == "":
            if arg.required:
                raise CommandError(f"{path(spec, parent)} needs {arg.name}. Usage: {how}")
            continue
        args[arg.name] = _convert(how, arg, value)
    if raw:
        raise CommandError(f"{path(spec, parent)} got unexpected {', '.join(raw)}. Usage: {how}")
    return args


def _split_positional(spec: CommandSpec, text: str) -> dict[str, object]:
    """`name=value` (or `name="a few words"`) words set keyword-only arguments wherever
    they stand; the other words fill the positional arguments in order, and the last
    positional one takes the rest of the text as written (line breaks included).

    Strict where a mistake would otherwise slip into the post: an option given twice,
    a quote never closed, or a word that looks like a misspelt option is refused."""
    keyword = {arg.name for arg in spec.args if arg.keyword_only}
    values: dict[str, object] = {}
    kept: list[str] = []
    last = 0
    for word in _WORD.finditer(text) if keyword else ():
        name, sep, value = word.group().partition("=")
        if not sep:
            continue
        key = name.lower()
        if key not in keyword:
            guess = _misspelt(key, keyword)
            if guess:
                raise CommandError(f"Unknown option {name}= (did you mean {guess}=?)")
            continue
        if key in values:
            raise CommandError(f"{key}= is given twice; give each option once.")
        if word["quoted"] is None and value.startswith('"'):
            raise CommandError(
                f'The quote in {word.group()} is never closed: write {key}="…" with a closing ".'
            )
        values[key] = word["quoted"] if word["quoted"] is not None else value
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


def _misspelt(name: str, options: set[str]) -> str | None:
    """The option `name=` most likely meant (`tärget` → `target`), if it is that close."""
    plain = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in plain if not unicodedata.combining(c)).casefold()
    found = difflib.get_close_matches(plain, sorted(options), n=1, cutoff=0.8)
    found = found or difflib.get_close_matches(name.casefold(), sorted(options), n=1, cutoff=0.8)
    return found[0] if found else None


def _convert(how: str, arg: ArgSpec, value: object) -> object:
    if arg.type is ArgType.INTEGER:
        try:
            number = int(str(value))
        except ValueError:
            raise CommandError(f"{arg.name} must be a whole number. Usage: {how}") from None
        low, high = arg.min_value, arg.max_value
        if (low is not None and number < low) or (high is not None and number > high):
            if low is not None and high is not None:
                raise CommandError(f"{arg.name} must be between {low} and {high}.")
            bound = f"at least {low}" if low is not None else f"at most {high}"
            raise CommandError(f"{arg.name} must be {bound}.")
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
