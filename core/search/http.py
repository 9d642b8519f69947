"""What the web search's HTTP requests share, to SearXNG and to pages alike."""

from __future__ import annotations

__all__ = ["CHUNK", "USER_AGENT"]

#: sent with every request, so site owners can tell what reads their pages
USER_AGENT = "HeraldBot/0.1 (web search for a chat bot)"

#: bodies are read in pieces of this size
CHUNK = 64 * 1024
