"""Who may talk to Herald, and who administers it: decided here for every platform.

Entries are `platform:id`; `platform:*` matches the whole platform. Empty
allow-lists allow everyone. Herald admins pass every allow-list and limit.
Manager roles (`discord:<role id>`) manage chats like the platform's own
chat administrators do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from core.config import Settings
from core.platform import Author, Inbound


def _entries(items: Iterable[str]) -> frozenset[str]:
    return frozenset(item.strip() for item in items if item.strip())


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    allowed_chats: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()
    manager_roles: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        chats: Iterable[str] = (),
        users: Iterable[str] = (),
        admins: Iterable[str] = (),
        manager_roles: Iterable[str] = (),
    ) -> AccessPolicy:
        return cls(_entries(chats), _entries(users), _entries(admins), _entries(manager_roles))

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls.of(settings.allowed_chats, settings.allowed_users, settings.admins, settings.manager_roles)

    @staticmethod
    def _matches(entries: frozenset[str], platform: str, ident: str) -> bool:
        return f"{platform}:{ident}" in entries or f"{platform}:*" in entries

    def is_admin(self, platform: str, author: Author) -> bool:
        return self._matches(self.admins, platform, author.user_id)

    def allows(self, event: Inbound) -> bool:
        if self.is_admin(event.platform, event.author):
            return True
        chat_ok = not self.allowed_chats or self._matches(self.allowed_chats, event.platform, event.chat_id)
        user_ok = not self.allowed_users or self._matches(
            self.allowed_users, event.platform, event.author.user_id
        )
        return chat_ok and user_ok

    def may_manage_chat(self, event: Inbound) -> bool:
        """Chat-wide settings: anyone in a private chat, else chat admins, holders of a
        manager role, and Herald admins."""
        author, platform = event.author, event.platform
        return (
            event.is_private
            or author.is_chat_admin
            or any(f"{platform}:{role}" in self.manager_roles for role in author.roles)
            or self.is_admin(platform, author)
        )
