"""How a post waiting for approval is shown, once for every platform: its text and
its buttons, which are ordinary command buttons (`/schedule approve|edit|
regenerate|reject ID`). A click runs the command as the person who clicks."""

from __future__ import annotations

from core.platform import Button, ButtonStyle, CommandCall
from core.posts.schedules.store import Post


def approval_text(post: Post) -> str:
    """The draft exactly as it would be published, with its post id."""
    return f"Draft `{post.id}` for {post.slot[:16].replace('T', ' ')} — approve to publish:\n\n{post.text}"


def approval_buttons(post_id: str) -> tuple[Button, ...]:
    return (
        Button("✅ Approve", f"schedule approve {post_id}", ButtonStyle.POSITIVE),
        edit_button(post_id),
        Button("🔁 Regenerate", f"schedule regenerate {post_id}", ButtonStyle.PRIMARY),
        Button("✖️ Reject", f"schedule reject {post_id}", ButtonStyle.NEGATIVE),
    )


def edit_button(post_id: str) -> Button:
    return Button("✏️ Edit", f"schedule edit {post_id}")


def edit_request(call: CommandCall) -> str | None:
    """The post a click on Edit is for (`schedule edit ID`, no text yet), else None.

    Platforms with an editor (Discord's form, Telegram's forced reply) ask for the
    text there, then run `edit_command` with it; elsewhere the command itself says
    how to give the text."""
    if call.name != "schedule":
        return None
    if call.options is not None:
        has_text = bool(call.options.get("text"))
        words = [call.subcommand or "", str(call.options.get("id") or "")]
    else:
        words = (call.raw_args or "").split()
        has_text = len(words) > 2
    if has_text or len(words) < 2 or words[0] != "edit" or not words[1]:
        return None
    return words[1]


def edit_command(post_id: str, text: str) -> CommandCall:
    """`/schedule edit ID <text>`: what an editor's text runs."""
    return CommandCall("schedule", subcommand="edit", options={"id": post_id, "text": text})
