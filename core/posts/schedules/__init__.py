"""Schedules: recurrences for scheduled auto-drafts."""
