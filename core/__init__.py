"""Herald's platform-neutral core: engine, memory, limits, model clients, rendering."""
