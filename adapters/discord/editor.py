"""Edit on Discord: a form (modal) holding the draft; submitting it runs the edit.

Discord opens a form only as the first answer to a click, so the bot opens it
before anything else (its edit hook); the submitted text completes the Edit
button's command, which then runs like any other click.
"""

from __future__ import annotations

from collections.abc import Mapping

import discord

from core.posts.schedules.approval import edit_button
from core.posts.schedules.store import Post


def edit_form(post: Post) -> discord.ui.Modal:
    """Edit: the draft in a text box. The form carries the Edit button's command, which
    the submitted text completes (the bot's `on_interaction`)."""
    form = discord.ui.Modal(title=f"Edit post {post.id}"[:45], custom_id=edit_button(post.id).data)
    form.add_item(
        discord.ui.TextInput(
            label="Text to publish",
            style=discord.TextStyle.paragraph,
            default=post.text[:4000],
            max_length=4000,
            custom_id="text",
        )
    )
    return form


def form_text(data: Mapping[str, object]) -> str:
    """The text box's value from a submitted `edit_form`."""
    for row in data.get("components") or []:  # type: ignore[attr-defined]
        for item in row.get("components") or []:
            if item.get("custom_id") == "text":
                return str(item.get("value") or "").strip()
    return ""
