"""Throw-away NATS and Redis servers for the tests: one process each, on a free loopback port, in a temp dir.

The tests never use servers that may already run on the standard ports (4222, 6379): they start their
own through `spawn_nats` / `spawn_redis` (the session fixtures in conftest.py do). A missing binary
skips the test with the Debian package to install, or fails it when `CATGA_REQUIRE_SERVICES=1`
(`.ci/run` sets it; `make services` installs the packages when run as root).

A `Server` only ever signals the PID it started. `restart()` keeps the port and the data dir, so a
client that reconnects finds the same server again (JetStream streams survive it; Redis runs without
persistence, so its keys do not).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["Server", "flush_redis", "free_port", "require", "spawn_nats", "spawn_redis"]

REQUIRE_ENV = "CATGA_REQUIRE_SERVICES"
# Debian installs nats-server in /usr/sbin, which a non-root PATH usually lacks.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# Servers started and not yet stopped: stopped at interpreter exit if a fixture's teardown never ran.
_live: set[Server] = set()


def require(binary: str, package: str) -> str:
    """The path of `binary`; otherwise skip the test (or fail it under CATGA_REQUIRE_SERVICES=1)."""
    path = shutil.which(binary) or shutil.which(binary, path=os.pathsep.join(_EXTRA_BIN_DIRS))
    if path is not None:
        return path
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(
            f"{binary} not found and {REQUIRE_ENV}=1: install {package} "
            f"(`apt-get install -y {package}`, or `make services` as root)",
            pytrace=False,
        )
    pytest.skip(f"needs {package}: apt-get install {package}")


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it by binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Server:
    """A server process on 127.0.0.1:`port` with its files in `directory`.

    `argv` is fixed at creation (it holds the port and the data dir), so `start()` after `stop()` or
    `kill()` brings back the same server on the same port.
    """

    def __init__(
        self, name: str, argv: list[str], port: int, url: str, directory: Path, log: Path, ready: bytes
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.url = url
        self.directory = directory
        self.log = log  # the server's own log file
        self.ready = ready  # what the server logs once it listens (the port alone may be someone else's)
        self.output = directory / f"{name}.out"  # its stdout/stderr (errors before the log is open)
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<Server {self.name} {self.url} {state}>"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Server:
        """Start the process and wait until it logs that it is ready and its port accepts (no-op when running).

        Both checks: another process that holds the port accepts too, while ours fails to bind.
        """
        if self.running:
            return self
        self._reap()
        offset = self.log.stat().st_size if self.log.exists() else 0  # the log is appended on restarts
        with open(self.output, "ab") as out:
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        self._proc = proc
        _live.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                self._reap()
                raise RuntimeError(self._failure(f"exited with status {proc.returncode} before it was ready"))
            if self._logged_ready(offset):
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return self
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(self._failure(f"was not ready within {START_TIMEOUT:g} s"))
            time.sleep(0.005)

    def _logged_ready(self, offset: int) -> bool:
        try:
            with open(self.log, "rb") as log:
                log.seek(offset)
                return self.ready in log.read()
        except OSError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM our PID and wait for it (SIGKILL after `timeout`); no-op when not running."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL our PID (a crash: no shutdown, no flush) and reap it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self._reap()

    def restart(self) -> Server:
        """`stop()` then `start()`: same port, same data dir."""
        self.stop()
        return self.start()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None
            _live.discard(self)

    def _failure(self, what: str) -> str:
        parts = [f"{self.name} ({' '.join(self.argv)}) {what}"]
        for path in (self.log, self.output):
            if tail := _tail(path):
                parts.append(f"--- tail of {path}:\n{tail}")
        return "\n".join(parts)


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - only when a teardown did not run
    for server in list(_live):
        server.stop(timeout=2.0)


def _spawn(make: Callable[[int], Server], attempts: int = 3) -> Server:
    # The port is free when picked but may be taken before the server binds it: try another one.
    for attempt in range(attempts):
        server = make(free_port())
        try:
            return server.start()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def spawn_nats(directory: Path | str) -> Server:
    """nats-server with JetStream (file storage in `directory`/js), logging to `directory`/nats.log."""
    binary = require("nats-server", "nats-server")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "nats.log"

    def make(port: int) -> Server:
        argv = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(directory / "js"), "-l", str(log)]
        return Server("nats", argv, port, f"nats://127.0.0.1:{port}", directory, log, ready=b"Server is ready")

    return _spawn(make)


def spawn_redis(directory: Path | str) -> Server:
    """redis-server without persistence, its files in `directory`, logging to `directory`/redis.log."""
    binary = require("redis-server", "redis-server")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"

    def make(port: int) -> Server:
        argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(directory), "--logfile", str(log)]
        url = f"redis://127.0.0.1:{port}/0"
        return Server("redis", argv, port, url, directory, log, ready=b"Ready to accept connections")

    return _spawn(make)


def flush_redis(port: int, timeout: float = 5.0) -> None:
    """FLUSHALL over a raw socket (no client library needed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(b"*1\r\n$8\r\nFLUSHALL\r\n")
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    if reply != b"+OK\r\n":
        raise RuntimeError(f"FLUSHALL on 127.0.0.1:{port} answered {reply!r}")
