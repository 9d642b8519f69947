"""Building the prompt: system prompt plus as many recent turns as fit the budget.

The budget is the model's input limit less the answer's `max_new_tokens` and a
margin. Sizes come from the model's own tokenizer where the server offers one
(cached per turn in memory, and the final prompt is counted exactly by the
server), so a long conversation never reaches the server's context-overflow
error.

Old turns are dropped in blocks aligned to turn sequence numbers, not one at a
time: consecutive prompts then share a long, stable prefix (system prompt and
the same oldest turns), which TGI's prefix cache reuses. A prompt begins at the
first user turn of a block, never inside the oldest stored block (which the
history's own trimming shortens turn by turn), so the start moves a whole block
at a time whether the model's budget or the history's length is what binds; the
history keeps one block beyond its length for that (`ConversationStore`).
Where the budget binds, blocks are halved until one takes at most half of it,
so a small model is not left with a sliver of its context after a drop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from core.chat.memory import Turn
from core.llm.base import ChatMessage, LLMClient, PreparedPrompt


class MessageTooLong(Exception):
    """The new message alone does not fit; the numbers are for the user. The system
    prompt's share tells whether a persona, rather than the message, is to blame."""

    def __init__(self, tokens: int, limit: int, *, system_tokens: int = 0, budget: int = 0) -> None:
        super().__init__(f"message has {tokens} tokens, at most {limit} fit")
        self.tokens = tokens
        self.limit = limit
        self.system_tokens = system_tokens
        self.budget = budget


@dataclass(frozen=True, slots=True)
class BuiltContext:
    prompt: PreparedPrompt
    user_tokens: int
    history_used: int  # how many stored turns made it into the prompt
    history_start: int  # index of the first stored turn used (len(history) when none)


class ContextBuilder:
    def __init__(
        self,
        llm: LLMClient,
        *,
        max_new_tokens: int,
        margin: int,
        block_messages: int,
        overhead_guess: int = 8,
        cache_size: int = 64,
    ) -> None:
        self._llm = llm
        self._max_new = max_new_tokens
        self._margin = margin
        self._block = block_messages
        self._overhead = overhead_guess  # template tokens per message, learned from exact counts
        self._system_counts: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    @property
    def budget(self) -> int:
        info = self._llm.info
        return min(info.max_input_tokens, info.max_total_tokens - self._max_new) - self._margin

    @property
    def max_system_tokens(self) -> int:
        """The most a persona may take, so that the conversation keeps room: half."""
        return self.budget // 2

    async def build(
        self,
        system: str,
        history: Sequence[Turn],
        user_text: str,
        *,
        user_tokens: int | None = None,
        skip_blocks: int = 0,
    ) -> BuiltContext:
        """Choose the turns, then let the server template and count the result.

        `user_tokens` may be counted by the caller ahead of time (the engine
        overlaps that request with its Redis work). `skip_blocks` drops that
        many more blocks than the estimate asks for; the engine uses it when a
        server without exact counting still overflowed.
        """
        budget = self.budget
        system_tokens = await self._system_tokens(system)
        if user_tokens is None:
            user_tokens = await self._llm.count_tokens(user_text)
        fixed = system_tokens + user_tokens + 2 * self._overhead
        if fixed > budget:
            limit = max(0, budget - system_tokens - 2 * self._overhead)
            raise MessageTooLong(user_tokens, limit, system_tokens=system_tokens, budget=budget)

        starts = self._block_starts(history, self._block_size(history, budget))
        index = self._first_fitting(starts, history, fixed, budget)
        index = min(index + skip_blocks, len(starts) - 1)
        while True:
            start = starts[index]
            messages = self._messages(system, history[start:], user_text)
            prompt = await self._llm.prepare(messages)
            if prompt.input_tokens <= budget:
                self._learn(prompt, system_tokens + user_tokens, history[start:])
                return BuiltContext(prompt, user_tokens, len(history) - start, start)
            if index == len(starts) - 1:
                over = prompt.input_tokens - user_tokens
                limit = max(0, budget - over)
                raise MessageTooLong(user_tokens, limit, system_tokens=system_tokens, budget=budget)
            index += 1

    def _block_size(self, history: Sequence[Turn], budget: int) -> int:
        """The configured block, halved while a block of this history's average message
        would take more than half the budget."""
        block = self._block
        if not history:
            return block
        per_message = sum(t.tokens for t in history) / len(history) + self._overhead
        while block > 2 and block * per_message > budget / 2:
            block //= 2
        return block

    @staticmethod
    def _block_starts(history: Sequence[Turn], block: int) -> list[int]:
        """Indexes where a prompt may begin, then 'none': each block's first user turn,
        except in the oldest block when trimming has cut into it (its first user turn
        changes with every trim); that one only when there is no other."""
        starts: list[int] = []
        numbers: list[int] = []
        for i, turn in enumerate(history):
            number = (turn.seq - 1) // block
            if turn.role == "user" and (not numbers or numbers[-1] != number):
                starts.append(i)
                numbers.append(number)
        cut = bool(history) and (history[0].seq - 1) % block != 0
        if len(starts) > 1 and cut and numbers[0] == (history[0].seq - 1) // block:
            starts.pop(0)
        starts.append(len(history))
        return starts

    def _first_fitting(self, starts: list[int], history: Sequence[Turn], fixed: int, budget: int) -> int:
        """The earliest block start whose estimated prompt fits."""
        suffix = [0] * (len(history) + 1)
        for i in range(len(history) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + history[i].tokens + self._overhead
        for index, start in enumerate(starts):
            if fixed + suffix[start] <= budget:
                return index
        return len(starts) - 1

    @staticmethod
    def _messages(system: str, turns: Sequence[Turn], user_text: str) -> list[ChatMessage]:
        messages = [ChatMessage("system", system)]
        messages += [ChatMessage(t.role, t.content) for t in turns]
        messages.append(ChatMessage("user", user_text))
        return messages

    async def _system_tokens(self, system: str) -> int:
        cached = self._system_counts.get(system)
        if cached is None:
            cached = await self._llm.count_tokens(system)
            self._system_counts[system] = cached
            if len(self._system_counts) > self._cache_size:
                self._system_counts.popitem(last=False)
        else:
            self._system_counts.move_to_end(system)
        return cached

    def _learn(self, prompt: PreparedPrompt, fixed_content: int, turns: Sequence[Turn]) -> None:
        """Keep the per-message template overhead in line with the server's exact count."""
        if not prompt.exact:
            return
        content = fixed_content + sum(t.tokens for t in turns)
        per_message = -(-(prompt.input_tokens - content) // len(prompt.messages))
        self._overhead = max(0, per_message)
