"""Web search for `/web`: SearXNG's results, the pages' own text, and numbered sources.

`searxng` asks SearXNG; `pages` reads the result pages, connecting only where
`addresses` allows, and `page_text` makes them readable text; `sources` turns
them into numbered sources for the prompt; `errors` says what went wrong, and
`http` holds what all the requests share. The engine depends on `web_context`,
`Source` and `WebSearchError`, and is handed a `SearxngClient` and a `PageFetcher`.
"""
