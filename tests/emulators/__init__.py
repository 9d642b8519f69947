"""Loopback emulators of the external services Herald talks to."""
