"""Storage: the Redis key layout and the Redis client."""
