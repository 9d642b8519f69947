"""Drafts and campaign plans kept for a while, so a later command can schedule them.

Each is stored under its own short id with an expiry (30 days): "schedule
draft 3fa2c1d0 at 2026-12-01 09:00" needs the text exactly as it was shown.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from core.posts.campaigns import Campaign
from core.posts.drafting import Draft, DraftRequest
from core.posts.schedules.store import new_id
from core.posts.targets import Target
from core.storage.keys import Keys
from core.storage.redis_client import RedisClient

KEEP_SECONDS = 30 * 86400


@dataclass(frozen=True, slots=True)
class SavedDraft:
    draft: Draft
    request: DraftRequest  # what it was drafted from: Regenerate and Shorten need it


class SavedContent:
    def __init__(self, redis: RedisClient, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def save_draft(self, draft: Draft, request: DraftRequest) -> str:
        draft_id = new_id()
        data = {
            "target": draft.target.value,
            "posts": list(draft.posts),
            "request": asdict(request) | {"target": request.target.value},
        }
        await self._redis.set(self._keys.saved("draft", draft_id), json.dumps(data), ex=KEEP_SECONDS)
        return draft_id

    async def draft(self, draft_id: str) -> SavedDraft | None:
        raw = await self._redis.get(self._keys.saved("draft", draft_id))
        if raw is None:
            return None
        data = json.loads(raw)
        draft = Draft(Target(data["target"]), tuple(data["posts"]))
        request = data.get("request") or {"prompt": "", "target": draft.target.value}
        return SavedDraft(draft, DraftRequest(**(request | {"target": Target(request["target"])})))

    async def save_campaign(self, campaign: Campaign) -> str:
        campaign_id = new_id()
        await self._redis.set(
            self._keys.saved("campaign", campaign_id), campaign.model_dump_json(), ex=KEEP_SECONDS
        )
        return campaign_id

    async def campaign(self, campaign_id: str) -> Campaign | None:
        raw = await self._redis.get(self._keys.saved("campaign", campaign_id))
        return None if raw is None else Campaign.model_validate_json(raw)
