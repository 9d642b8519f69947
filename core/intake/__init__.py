"""Durable intake: events kept in Redis Streams until answered (see `worker`)."""
