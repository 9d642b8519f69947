"""A chat's recorded messages (opt-in per chat, `/history on`): stored, indexed and
forgotten in Redis, for /search and /summary."""
