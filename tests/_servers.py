"""Throw-away NATS, Redis and PostgreSQL servers for the tests: one process each, on a free loopback port, in a
temp dir.

The tests never use servers that may already run on the standard ports (4222, 6379, 5432): they start
their own through `spawn_nats` / `spawn_redis` / `spawn_postgres` (the session fixtures in conftest.py
do). A missing binary skips the test with the Debian package to install, or fails it when
`CATGA_REQUIRE_SERVICES=1` (`.ci/run` sets it; `make services` installs the packages when run as root).

A `Server` only ever signals the PID it started. `restart()` keeps the port and the data dir, so a
client that reconnects finds the same server again (JetStream streams and PostgreSQL tables survive it;
Redis runs without persistence, so its keys do not).

PostgreSQL: `initdb` and `postgres` refuse to run as root, so as root the cluster belongs to the OS user
`postgres` and lives in its own world-traversable `/tmp/catga-pg-*` dir (pytest's temp dirs are 0700
root), which `close()` removes. Debian keeps the binaries off PATH, in /usr/lib/postgresql/VERSION/bin.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

__all__ = [
    "PostgresServer",
    "Server",
    "flush_redis",
    "free_port",
    "postgres_bindir",
    "require",
    "spawn_nats",
    "spawn_postgres",
    "spawn_redis",
]

REQUIRE_ENV = "CATGA_REQUIRE_SERVICES"
# Debian installs nats-server in /usr/sbin, which a non-root PATH usually lacks.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/bin")
# Debian's postgresql-NN packages: initdb, postgres and psql live here, never on PATH.
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
POSTGRES_USER = "postgres"  # the OS user that runs the cluster when the tests run as root
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

# Servers started and not yet stopped: stopped at interpreter exit if a fixture's teardown never ran.
_live: set[Server] = set()


def require(binary: str, package: str, dirs: Sequence[str] = ()) -> str:
    """The path of `binary` (PATH, then `dirs`, then the usual bin dirs); otherwise skip the test (or fail it
    under CATGA_REQUIRE_SERVICES=1)."""
    path = shutil.which(binary) or shutil.which(binary, path=os.pathsep.join([*dirs, *_EXTRA_BIN_DIRS]))
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
        self,
        name: str,
        argv: list[str],
        port: int,
        url: str,
        directory: Path,
        log: Path,
        ready: bytes,
        *,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        scratch: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.url = url
        self.directory = directory
        self.log = log  # the server's own log file
        self.ready = ready  # what the server logs once it listens (the port alone may be someone else's)
        self.output = directory / f"{name}.out"  # its stdout/stderr (errors before the log is open)
        self.user = user  # the OS user to run as (None: this process's user)
        self.stop_signal = stop_signal  # what stop() sends first
        self.scratch = scratch  # a dir outside `directory` that close() removes
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
            proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **_as_user(self.user)
            )
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
        """Send `stop_signal` (SIGTERM; SIGINT for PostgreSQL) to our PID and wait for it (SIGKILL after
        `timeout`); no-op when not running."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            children = _children(proc.pid)
            proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _wait_gone(children)
        self._reap()

    def kill(self) -> None:
        """SIGKILL our PID (a crash: no shutdown, no flush) and reap it.

        Only that PID is signalled; its children (PostgreSQL's backends) notice and exit by themselves,
        and this waits for them, so that `start()` does not find them still holding the data dir.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            children = _children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _wait_gone(children)
        self._reap()

    def close(self) -> None:
        """`stop()`, then remove `scratch` (for good: the server cannot start again)."""
        self.stop()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

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
        for path in dict.fromkeys((self.log, self.output)):
            if tail := _tail(path):
                parts.append(f"--- tail of {path}:\n{tail}")
        return "\n".join(parts)


def _as_user(user: str | None) -> dict[str, object]:
    """Popen arguments that run the child as `user` (with its own group, no supplementary groups)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [], "cwd": "/"}


def _children(pid: int) -> list[int]:
    """The PIDs whose parent is `pid` (Linux /proc; empty elsewhere)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat, "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for init to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pids: list[int], timeout: float = STOP_TIMEOUT) -> None:
    """Wait (never signal) until none of `pids` runs any more, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.005)


_scratch_dirs: set[Path] = set()  # PostgreSQL clusters outside pytest's temp dirs, removed at exit


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - only when a teardown did not run
    for server in list(_live):
        server.stop(timeout=2.0)
    for path in list(_scratch_dirs):
        shutil.rmtree(path, ignore_errors=True)


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


# ---------------------------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path:
    """The bin dir of the newest Debian PostgreSQL (or of the `initdb` on PATH); otherwise skip the test
    naming the `postgresql` package (or fail it under CATGA_REQUIRE_SERVICES=1)."""

    def version(bindir: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", Path(bindir).parent.name))

    dirs = sorted(glob.glob(POSTGRES_BIN_GLOB), key=version, reverse=True)
    dirs = [d for d in dirs if os.access(os.path.join(d, "initdb"), os.X_OK)]
    initdb = shutil.which("initdb", path=dirs[0]) if dirs else None
    # Resolved: a symlink on PATH (/usr/local/bin/initdb) stands for a bin dir that also holds postgres and psql.
    return Path(initdb or require("initdb", "postgresql")).resolve().parent


class PostgresServer(Server):
    """A `postgres` postmaster; `url` / `dsn` is `postgresql://catga@127.0.0.1:PORT/catga` (trust auth).

    `catga` is the cluster's superuser. `stop()` sends SIGINT: a fast shutdown, which does not wait for
    the clients to disconnect.
    """

    def __init__(self, bindir: Path, data: Path, port: int, directory: Path, scratch: Path, user: str | None) -> None:
        argv = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(scratch / "sock")]
        for setting in (
            "listen_addresses=127.0.0.1",
            "fsync=off",  # throw-away data: no flushes (a shutdown takes 0.2 s, not 2 s)
            "full_page_writes=off",
            # synchronous_commit stays on: with fsync off it costs one write() (no difference measured),
            # and a commit acknowledged before kill() is still there after start() (crash tests rely on it).
        ):
            argv += ["-c", setting]
        log = directory / "postgres.out"  # postgres logs to stderr, which is `output`
        url = f"postgresql://catga@127.0.0.1:{port}/catga"
        super().__init__(
            "postgres",
            argv,
            port,
            url,
            directory,
            log,
            ready=b"ready to accept connections",
            user=user,
            stop_signal=signal.SIGINT,
            scratch=scratch,
        )
        self.bindir = bindir
        self.data = data

    @property
    def dsn(self) -> str:
        return self.url

    def psql(self, *commands: str, database: str = "catga", timeout: float = 30.0) -> str:
        """Run each SQL command with psql (autocommit, stop at the first error); return psql's output."""
        argv = [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        argv += ["-h", "127.0.0.1", "-p", str(self.port), "-U", "catga", "-d", database]
        for command in commands:
            argv += ["-c", command]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_pg_env(), check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql on port {self.port} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def reset(self) -> None:
        """Empty database `catga`: close the other connections to it, then drop and recreate schema public."""
        self.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = 'catga' AND pid <> pg_backend_pid()",
            "DROP SCHEMA IF EXISTS public CASCADE",
            "CREATE SCHEMA public",
        )


def _pg_env() -> dict[str, str]:
    # No PGHOST, PGPASSWORD, PGSERVICE... from the caller's environment: the arguments say everything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def spawn_postgres(directory: Path | str) -> PostgresServer:
    """A fresh PostgreSQL cluster with database `catga`, logging to `directory`/postgres.out.

    The cluster (data dir, Unix socket dir) lives in a new `/tmp/catga-pg-*` dir that `close()` removes:
    as root it belongs to the OS user `postgres`, who runs initdb and postgres (both refuse root).
    """
    bindir = postgres_bindir()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    user = POSTGRES_USER if os.geteuid() == 0 else None
    if user is not None:
        try:
            owner = pwd.getpwnam(user)
        except KeyError:
            raise RuntimeError(f"running as root, but there is no OS user {user!r} to run PostgreSQL") from None
    scratch = Path(tempfile.mkdtemp(prefix="catga-pg-"))
    _scratch_dirs.add(scratch)
    try:
        (scratch / "sock").mkdir()
        scratch.chmod(0o755)  # traversable: the log and socket paths are readable for anyone
        if user is not None:
            for path in (scratch, scratch / "sock"):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        data = scratch / "data"
        argv = [str(bindir / "initdb"), "-D", str(data), "-U", "catga", "--auth=trust"]
        argv += ["--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        with open(directory / "initdb.out", "wb") as out:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=_pg_env(), **_as_user(user)
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb exited with status {done.returncode}:\n{_tail(directory / 'initdb.out')}")

        def make(port: int) -> Server:
            return PostgresServer(bindir, data, port, directory, scratch, user)

        server = _spawn(make)
        assert isinstance(server, PostgresServer)
        try:
            server.psql("CREATE DATABASE catga", database="postgres")
        except BaseException:
            server.stop()
            raise
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        _scratch_dirs.discard(scratch)
        raise
    return server
