"""Publishing to social networks (X, Bluesky, Mastodon): accounts, clients, limits."""
