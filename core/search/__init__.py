"""Web search for `/web`: SearXNG's results, the pages' own text, and numbered sources.

Everything lives in `web.py`; the engine depends on `web_context`, `Source` and
`WebSearchError`, and is handed a `SearxngClient` and a `PageFetcher`.
"""
