"""What goes wrong in web search: an error's text is for the logs, its `user_message`
for the person asking (the messages that only SearXNG's failures use live in `searxng`)."""

from __future__ import annotations

__all__ = ["PAGE_UNREADABLE", "SEARCH_FAILED", "BlockedAddress", "PageFetchError", "WebSearchError"]

SEARCH_FAILED = "The web search service failed to answer — try again in a minute."
PAGE_UNREADABLE = "I couldn't read that page."


class WebSearchError(Exception):
    """Web search failed; `str()` is for the logs, `user_message` for the person asking."""

    def __init__(self, message: str, *, user_message: str = SEARCH_FAILED) -> None:
        super().__init__(message)
        self.user_message = user_message


class PageFetchError(WebSearchError):
    """One page could not be read (refused, unreachable, too slow, not text)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, user_message=PAGE_UNREADABLE)


class BlockedAddress(PageFetchError):
    """The page, or a redirect on the way to it, is at an address the policy refuses."""
