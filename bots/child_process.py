"""What every child process Herald starts shares: it never outlives Herald."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: the child gets SIGTERM if Herald is killed without cleaning up
    (`PR_SET_PDEATHSIG`; the parent must start it from a thread that lives as
    long as the process, such as the event loop's)."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
