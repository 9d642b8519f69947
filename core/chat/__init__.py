"""The path of one message: engine, context, memory, rendering, limits and access."""
