"""Commands: the typed registry, Herald's own commands and the schedule command."""
