"""The conversation's own commands: ask, reset, persona, cancel, continue, help."""

from __future__ import annotations

from typing import Any

from core import messages
from core.chat import personas
from core.chat.access import AccessPolicy
from core.chat.cancel import CancelBus
from core.chat.context import ContextBuilder
from core.chat.locks import ConversationLocks
from core.chat.memory import ConversationStore
from core.commands.context import CommandContext
from core.commands.registry import ArgSpec, ArgType, CommandRegistry, CommandSpec, usage
from core.llm.base import LLMClient


class ChatCommands:
    def __init__(
        self,
        memory: ConversationStore,
        access: AccessPolicy,
        locks: ConversationLocks,
        cancels: CancelBus,
        context: ContextBuilder,
        llm: LLMClient,
    ) -> None:
        self._memory = memory
        self._access = access
        self._locks = locks
        self._cancels = cancels
        self._context = context
        self._llm = llm

    def specs(self) -> tuple[CommandSpec, ...]:
        return (
            CommandSpec(
                "ask",
                "Ask Herald something in this conversation",
                self.ask,
                args=(ArgSpec("question", "What you want to ask", required=True),),
                generates=True,
            ),
            CommandSpec("reset", "Forget this conversation", self.reset, needs_turn=True),
            CommandSpec(
                "persona",
                "Show, set or clear this chat's persona",
                self.persona,
                args=(
                    ArgSpec(
                        "action",
                        "What to do",
                        type=ArgType.CHOICE,
                        choices=("show", "set", "clear", "list"),
                    ),
                    ArgSpec(
                        "text",
                        "A preset name or your own instructions",
                        max_length=personas.MAX_PERSONA_CHARS,
                    ),
                ),
            ),
            CommandSpec("cancel", "Stop the answer in progress", self.cancel),
            CommandSpec("continue", "Write the rest of an answer cut short", self.continue_, generates=True),
        )

    async def ask(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        await ctx.conversation.answer(ctx.event, ctx.surface, str(args["question"]))

    async def reset(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        forgot = await self._memory.reset(ctx.event.conversation)
        await ctx.reply(messages.RESET_DONE if forgot else messages.RESET_EMPTY)

    async def persona(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        event = ctx.event
        action = args.get("action", "show")
        if action == "list":
            names = ", ".join(sorted(personas.PRESETS))
            await ctx.reply(
                f"Presets: {names}. Use /persona set NAME, or /persona set followed by your own text."
            )
        elif action == "show":
            current = await self._memory.persona(event.platform, event.chat_id)
            await ctx.reply(f"Current persona: {current}" if current else "I'm using my default persona.")
        elif not self._access.may_manage_chat(event):
            await ctx.reply(messages.ADMINS_ONLY)
        elif action == "clear":
            await self._memory.set_persona(event.platform, event.chat_id, None)
            await ctx.reply("Persona cleared — back to my default.")
        elif not args.get("text"):
            await ctx.reply("Tell me which persona: /persona set NAME or /persona set <your own text>.")
        else:
            prompt = personas.resolve(str(args["text"]))
            too_long = await self._too_long(prompt)
            if too_long:
                await ctx.reply(too_long)
                return
            await self._memory.set_persona(event.platform, event.chat_id, prompt)
            await ctx.reply("Persona set for this chat.")

    async def _too_long(self, prompt: str) -> str:
        """Why a persona leaves too little room for the conversation, or ""."""
        tokens = await self._llm.count_tokens(prompt)
        if tokens <= self._context.max_system_tokens:
            return ""
        return messages.persona_too_long(tokens, self._context.budget, self._context.max_system_tokens)

    async def continue_(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        await ctx.conversation.continue_answer(ctx.event, ctx.surface)

    async def cancel(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        conv = ctx.event.conversation
        busy = await self._locks.is_held(conv)  # an answer holds the conversation's turn
        if busy:  # a request now would stop the next answer, were it still remembered
            await self._cancels.request(conv)
        await ctx.reply(messages.CANCELLING if busy else messages.NOTHING_TO_CANCEL)


class HelpCommand:
    """`/help [command]`: every command of `registry`, or one explained."""

    def __init__(self, registry: CommandRegistry) -> None:
        self._registry = registry

    def spec(self) -> CommandSpec:
        return CommandSpec(
            "help",
            "What Herald can do",
            self.help,
            args=(ArgSpec("command", "A command to explain", max_length=40),),
        )

    async def help(self, ctx: CommandContext, args: dict[str, Any]) -> None:
        name = str(args.get("command", "")).lstrip("/").lower()
        if not name:
            lines = ["Mention me, reply to me or message me directly to chat. Commands:"]
            lines += [f"{usage(spec)} — {spec.description}" for spec in self._registry]
            await ctx.reply("\n".join(lines))
            return
        spec = self._registry.get(name)
        if spec is None:
            await ctx.reply(f"I don't know /{name}. Try /help.")
            return
        lines = [f"{usage(spec)} — {spec.description}"]
        lines += [f"  {arg.name}: {arg.description}" for arg in spec.args]
        lines += [f"  {usage(sub, spec)} — {sub.description}" for sub in spec.subcommands]
        await ctx.reply("\n".join(lines))
