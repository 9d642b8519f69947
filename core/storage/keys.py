"""The one place that knows Herald's Redis key layout.

Every key starts with the configured prefix (default `herald`), so several
deployments, or the test suite, can share one server without colliding.

Redis Cluster runs a script or a transaction only when all its keys hash to one
slot, so keys used together carry the same hash tag (the part in braces, which
alone decides the slot): a chat's conversations, persona, locks and recorded
messages share `{platform:chat}` (`chat_tag`); a person's admission keys (the
event, the rate bucket, the quota) share `{platform:user}`. Keys that are only
used alone (schedules, posts, deliveries, leases) have no tag, so a cluster
spreads them out.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.platform import ConversationKey


def chat_tag(platform: str, chat_id: str) -> str:
    """The hash tag of every key of one chat: a Redis Cluster keeps them in one slot."""
    return "{" + f"{platform}:{chat_id}" + "}"


def _thread(conv: ConversationKey) -> str:
    return conv.thread_id if conv.thread_id is not None else "-"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "herald"

    def history(self, conv: ConversationKey) -> str:
        """List of JSON turns, oldest first."""
        return f"{self.prefix}:hist:{chat_tag(conv.platform, conv.chat_id)}:{_thread(conv)}"

    def history_seq(self, conv: ConversationKey) -> str:
        """Counter numbering every turn ever appended (block alignment survives trims)."""
        return f"{self.prefix}:hist-seq:{chat_tag(conv.platform, conv.chat_id)}:{_thread(conv)}"

    def chat_conversations(self, platform: str, chat_id: str) -> tuple[str, str]:
        """SCAN patterns matching every history key (and its counter) of one chat."""
        chat = _glob_escape(chat_tag(platform, chat_id))
        return f"{self.prefix}:hist:{chat}:*", f"{self.prefix}:hist-seq:{chat}:*"

    def persona(self, platform: str, chat_id: str) -> str:
        """The chat's system prompt, when one was set."""
        return f"{self.prefix}:persona:{chat_tag(platform, chat_id)}"

    def event(self, platform: str, event_id: str, *, user_id: str) -> str:
        """Marks an incoming event id as seen (idempotency); under its author's tag, as
        admission checks it in one script with their bucket and quota."""
        return f"{self.prefix}:event:{{{platform}:{user_id}}}:{event_id}"

    def bucket(self, platform: str, user_id: str) -> str:
        """Token bucket hash for the per-user rate limit."""
        return f"{self.prefix}:bucket:{{{platform}:{user_id}}}"

    def quota(self, platform: str, user_id: str) -> str:
        """Prefix of the per-user daily token counters; the day is appended server-side
        (after the tag: a day's counter shares the slot)."""
        return f"{self.prefix}:quota:{{{platform}:{user_id}}}"

    def lock(self, conv: ConversationKey) -> str:
        return f"{self.prefix}:lock:{chat_tag(conv.platform, conv.chat_id)}:{_thread(conv)}"

    def command_digest(self, platform: str, scope: str) -> str:
        """Digest of the command set last written to a platform (scope: global or a guild)."""
        return f"{self.prefix}:commands:{platform}:{scope}"

    def schedules(self) -> str:
        """Hash: schedule id → definition (JSON)."""
        return f"{self.prefix}:schedules"

    def schedules_changed(self) -> str:
        """Pub/sub channel: a schedule was added, changed or deleted."""
        return f"{self.prefix}:schedules:changed"

    def schedule_slot(self, schedule_id: str, slot: str) -> str:
        """Claimed by the one run of a schedule at one fire time (SET NX)."""
        return f"{self.prefix}:slot:{schedule_id}:{slot}"

    def schedule_runs(self, schedule_id: str) -> str:
        return f"{self.prefix}:schedule-runs:{schedule_id}"

    def posts(self) -> str:
        """Hash: post id → post with its lifecycle state (JSON)."""
        return f"{self.prefix}:posts"

    def saved(self, kind: str, item_id: str) -> str:
        """A draft or a campaign plan kept so that it can be scheduled later."""
        return f"{self.prefix}:saved:{kind}:{item_id}"

    def chat_timezone(self, platform: str, chat_id: str) -> str:
        """The time zone a chat's schedules use unless a command names one."""
        return f"{self.prefix}:tz:{platform}:{chat_id}"

    def rate_share(self, platform: str, bot: str) -> str:
        """Sorted set of the processes calling the platform for one bot (`bot`: its
        `core.pacing_share.bot_tag`), scored by when each one's presence lapses."""
        return f"{self.prefix}:pacing:{platform}:{bot}"

    def scheduler_lease(self) -> str:
        """Held by the one replica that runs the scheduler."""
        return f"{self.prefix}:scheduler:leader"

    def chat_log(self, platform: str, chat_id: str, *parts: object) -> str:
        """A key of one chat's recorded messages (`core.chatlog.store` has the layout);
        the braces make the chat a Redis Cluster hash tag."""
        tail = ":".join(str(part) for part in parts)
        return f"{self.prefix}:log:{chat_tag(platform, chat_id)}:{tail}"

    def deliveries(self, post_id: str) -> str:
        """Hash: network → one post's delivery there (`core.social.delivery`)."""
        return f"{self.prefix}:deliveries:{post_id}"

    def social_accounts(self, platform: str, chat_id: str) -> str:
        """Hash: a chat's own social accounts, id → public part and sealed credentials
        (`core.social.accounts`)."""
        return f"{self.prefix}:accounts:{platform}:{chat_id}"

    def account_connecting(self, platform: str, user_id: str) -> str:
        """Hash, expiring: network → the chat a person is connecting an account to."""
        return f"{self.prefix}:accounts:connecting:{platform}:{user_id}"

    def installed_identities(self) -> str:
        """Hash: network → who the install's own account there posts as (JSON)."""
        return f"{self.prefix}:accounts:installed"

    def social_attention(self) -> str:
        """Hash: accounts that need a person's attention (a 401/403) → why."""
        return f"{self.prefix}:accounts:attention"

    def backfills(self) -> str:
        """Sorted set of the chats whose backfill is unfinished (`platform:chat`, by start
        time); each one's state is under its `chat_log` keys (`core.chatlog.backfill`)."""
        return f"{self.prefix}:backfills"

    def chat_log_pattern(self, platform: str, chat_id: str) -> str:
        """SCAN pattern matching every key of one chat's recorded messages."""
        return f"{self.prefix}:log:{_glob_escape(chat_tag(platform, chat_id))}:*"

    def cancel_channel(self) -> str:
        """Pub/sub channel carrying conversation keys whose generation must stop."""
        return f"{self.prefix}:cancel"

    # -- intake (core/intake): one stream per platform; the braces make the platform a
    # Redis Cluster hash tag, so a stream, its events' marks and its jobs share a slot

    def intake_stream(self, platform: str) -> str:
        """Stream of the platform's events waiting for, or taken by, a worker."""
        return f"{self.prefix}:intake:{{{platform}}}"

    def intake_seen(self, platform: str, event_id: str) -> str:
        """Marks an incoming event id as taken in (the platforms deliver some twice)."""
        return f"{self.prefix}:intake:{{{platform}}}:seen:{event_id}"

    def intake_job(self, platform: str, entry_id: str) -> str:
        """Hash: what one taken event has shown so far (the messages it sent, in order)."""
        return f"{self.prefix}:intake:{{{platform}}}:job:{entry_id}"

    def turn_saved(self, conv: ConversationKey, event_id: str) -> str:
        """Marks the turn of one event as saved in the conversation's history; built on
        the history's key so that it shares its hash slot."""
        return f"{self.history(conv)}:saved:{event_id}"

    def layout(self) -> str:
        """The key layout's version, set once keys of an earlier one were moved
        (`core.storage.migrate`)."""
        return f"{self.prefix}:layout"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
