"""Posts: drafts, campaigns, their targets, saved content and scheduled publishing."""
