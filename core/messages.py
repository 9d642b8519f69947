"""Every short, human message Herald says on its own behalf, in one place."""

from __future__ import annotations

STORE_DOWN = "My memory store is unavailable right now — try again in a minute."
NOT_ALLOWED = "Sorry, I'm not available in this chat."
BUSY_CONVERSATION = "I'm still working on an earlier message here — try again shortly."
STOPPED = "⏹️ Stopped."
NOTHING_TO_CANCEL = "Nothing to cancel — I'm not answering anything here."
CANCELLING = "Stopping the current answer."
RESET_DONE = "Done — I've forgotten this conversation."
RESET_EMPTY = "There was nothing to forget here."
EMPTY_MESSAGE = "What would you like to ask?"
ADMINS_ONLY = "Only chat admins can change that here."
UNEXPECTED = "Something went wrong on my side — try again in a minute."
CAMPAIGN_FAILED = (
    "I couldn't put together a valid campaign plan this time — try again, or simplify the brief."
)
THREAD_TOO_LONG = "That would be a very long thread — try a shorter brief."
RESTARTING = "Herald is restarting — try again in a moment."
CUT_SHORT = "✂️ That answer reached my length limit and stops mid-way."
#: the reason under an answer stopped at HERALD_ANSWER_TIMEOUT (see `interrupted`)
TIME_LIMIT = "This answer reached my time limit."
#: said once to a message still waiting for its conversation's turn after a moment
WAITING_FOR_TURN = "⏳ Waiting for my earlier answer here to finish — yours comes next."
#: a command's prompt (search results, pieces of a summary) would not fit the model
TOO_MUCH_TO_READ = "That is more than I can read at once — narrow it down (a shorter span, fewer results)."
#: under an answer another replica finished after the one writing it stopped (a crash)
RESUMED = "↻ Resumed after a restart."
#: in a message an answer taken over after a restart no longer needed
ANSWER_MOVED = "↻ (This answer was restarted; it is above.)"
#: a command (not an answer) that was under way when its replica stopped
COMMAND_INTERRUPTED = (
    "Herald restarted while doing that, and it may or may not have been done — check before trying again."
)
NOTHING_TO_CONTINUE = "There's nothing to continue here — my last answer was complete."
#: what the model is asked when a person wants the rest of a cut answer
CONTINUE_PROMPT = "Continue your previous answer exactly where it stopped, without repeating anything."


def rate_limited(seconds: float) -> str:
    return f"You're sending messages faster than I can answer — try again in {_duration(seconds)}."


def over_quota(seconds: float) -> str:
    return f"You've used today's answer quota — it renews in {_duration(seconds)}."


def message_too_long(tokens: int, limit: int) -> str:
    return (
        f"Your message is too long for me: it is {tokens:,} tokens and I can read "
        f"at most {limit:,} at once. Please shorten it."
    )


def persona_too_long(tokens: int, budget: int, most: int) -> str:
    return (
        f"That persona is {tokens:,} tokens; the model reads {budget:,} at once, and a persona "
        f"may take at most {most:,} of them so that the conversation fits. Please shorten it."
    )


def persona_crowds_out(tokens: int, budget: int, most: int) -> str:
    """A persona set when the model read more: now it, not the message, is too long."""
    return (
        f"This chat's persona is too long for the model in use now: it is {tokens:,} tokens, the "
        f"model reads {budget:,} at once, and a persona may take at most {most:,} so that "
        "messages fit. Set a shorter one with /persona set, or /persona clear."
    )


def draft_too_long(length: int, limit: int, where: str) -> str:
    return (
        f"I couldn't make that fit {where}: my best draft is {length:,} characters and the "
        f"limit is {limit:,}. Try a shorter brief."
    )


def interrupted(reason: str) -> str:
    return f"⚠️ Answer interrupted: {reason}"


def _duration(seconds: float) -> str:
    seconds = max(1, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{round(minutes / 60)} h"
