"""Real Redis and PostgreSQL servers for tests and benchmarks: each on a loopback port reserved
for it (`ReservedPort`: no other test server can take it, even while it is down for a restart),
in a temporary directory of its own, started by its user and stopped after it.

Nothing is started globally and nothing is left behind but the empty lock files of reserved
ports: `stop()` ends the server, removes its directory and releases its port (an `atexit` hook
does it too, should a run end without its teardown). Every wait is bounded.

PostgreSQL refuses to run as root. As root, its programs run as the `postgres` system user
(created by Debian's package) through `runuser`, on a data directory that user owns; as any
other user they run as that user.

A missing binary raises `ServiceUnavailable` (scripts/install-system-deps.sh installs them as
root); tests/support/services.py turns it into a skip, or a failure under CI.
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class ServiceUnavailable(RuntimeError):
    """A binary the server needs is not installed."""


def missing(message: str) -> None:
    raise ServiceUnavailable(f"{message} (scripts/install-system-deps.sh installs it as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Where reservations are kept apart: one lock file a port, locked while it is reserved.
RESERVED_PORTS_DIR = Path(tempfile.gettempdir()) / "oc-reserved-ports"
RESERVED_PORTS_SPAN = 8192  # how many ports below the kernel's ephemeral range may be reserved


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ReservedPort:
    """A loopback port that stays this server's while the server is down, until `release()`.

    A port from `free_port()` is free only when it is looked at: while a server is stopped (to
    be started again on the same port: its clients know it) or not yet listening, another
    xdist worker's server may be given the same port and bind it first. A reserved port lies
    below the kernel's ephemeral range, from which `free_port()` (every test server started on
    port 0) and every outgoing connection's local port are drawn, so none of those can take
    it; a lock file, held by this process until `release()` (or its end), keeps two
    reservations apart, in one process or in several."""

    def __init__(self) -> None:
        low = _ephemeral_ports()[0]
        candidates = list(range(max(1024, low - RESERVED_PORTS_SPAN), low))
        random.shuffle(candidates)
        RESERVED_PORTS_DIR.mkdir(exist_ok=True)
        for port in candidates:
            lock = open(RESERVED_PORTS_DIR / str(port), "a")  # noqa: SIM115 - closed in release()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another reservation holds it
                lock.close()
                continue
            if _bindable(port):  # nothing else (outside the tests) holds it either
                self.port, self._lock = port, lock
                return
            lock.close()
        raise RuntimeError(f"no port below {low} could be reserved: all {len(candidates)} are taken")

    def release(self) -> None:
        self._lock.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------- Redis


class RedisServer:
    """`redis-server` on 127.0.0.1:<reserved port>, no persistence, in a temporary directory.

    `restart()` stops it and starts it again on the same port: everything it held is gone
    (no RDB, no AOF), as after a crash of a cache-only Redis.
    """

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        self.binary = (
            binary or os.environ.get("OC_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
        )
        if not os.access(self.binary, os.X_OK):
            missing(f"redis-server is not installed ({self.binary})")
        self._reserved = None if port else ReservedPort()  # kept through restart()
        self.port = port or self._reserved.port
        self.dir = Path(tempfile.mkdtemp(prefix="oc-redis-"))
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self._cleaned = False
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.dir),
                "--logfile", str(self.log_path),
                "--daemonize", "no",
                "--protected-mode", "yes",
                "--databases", "4",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal is for pytest, not for Redis
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}:\n{_tail(self.log_path)}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        self.stop_process()
        raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT:g}s:\n{_tail(self.log_path)}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.settimeout(0.5)
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop_process(self) -> None:
        """Stop the server (its directory stays, for `start()` again)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        # The port is free once the process is gone; wait until nothing answers on it.
        deadline = time.monotonic() + 5
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down `down_for` seconds, start again on the same port."""
        self.stop_process()
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        self.stop_process()
        if not self._cleaned:
            self._cleaned = True
            shutil.rmtree(self.dir, ignore_errors=True)
            if self._reserved:
                self._reserved.release()


# ------------------------------------------------------------------------------ PostgreSQL


def _postgres_bindir() -> Path | None:
    explicit = os.environ.get("OC_PG_BINDIR")
    if explicit:
        return Path(explicit)
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<reserved port>, with one database owned by
    one user who logs in with a password (`url`). fsync is off: nothing here must survive."""

    def __init__(
        self, *, user: str = "oc", password: str = "oc-test-pw", database: str = "oc",
        port: int | None = None,
    ) -> None:
        bindir = _postgres_bindir()
        if bindir is None or not all((bindir / p).exists() for p in ("initdb", "pg_ctl", "postgres", "psql")):
            missing(f"PostgreSQL is not installed (no initdb/pg_ctl/postgres/psql in {bindir or '/usr/lib/postgresql/*/bin'})")
        self.bindir = bindir
        self.user, self.password, self.database = user, password, database
        self._reserved = None if port else ReservedPort()  # kept through start_process()
        self.port = port or self._reserved.port
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                missing("runuser is missing (needed to run PostgreSQL as the postgres user)")
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                missing("the postgres system user is missing (Debian's postgresql package creates it)")
            self._run_as = [runuser, "-u", "postgres", "--"]
        self.dir = Path(tempfile.mkdtemp(prefix="oc-pg-"))
        if self._run_as:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        self.data = self.dir / "data"
        self.sockets = self.dir  # a short path: a socket's path is limited to ~107 bytes
        self.log_path = self.dir / "postgres.log"
        self._started = False
        self._cleaned = False
        atexit.register(self.stop)

    @property
    def url(self) -> str:
        return f"postgres://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _run(self, *args: str, timeout: float = START_TIMEOUT, stdin: str | None = None) -> str:
        command = [*self._run_as, *args]
        try:
            result = subprocess.run(
                command, input=stdin, capture_output=True, text=True, timeout=timeout,
                cwd=self.dir, env={**os.environ, "LC_ALL": "C.UTF-8", "PGTZ": "UTC"},
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{' '.join(args)} took over {timeout:g}s:\n{_tail(self.log_path)}") from exc
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}\n"
                f"{_tail(self.log_path)}"
            )
        return result.stdout

    def start(self) -> None:
        if self._started:
            return
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                "-E", "UTF8", "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                "--no-sync",
            )
        self._start_cluster()
        self._started = True
        self.psql(
            f"CREATE ROLE \"{self.user}\" LOGIN CREATEDB PASSWORD '{self.password}';\n"
            f"CREATE DATABASE \"{self.database}\" OWNER \"{self.user}\";\n"
        )

    def _start_cluster(self) -> None:
        options = " ".join([
            "-c listen_addresses=127.0.0.1",
            f"-p {self.port}",
            f"-k {self.sockets}",
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
        ])
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path),
            "-o", options, "-w", "-t", str(int(START_TIMEOUT)), "start",
        )

    def stop_process(self) -> None:
        """Stop the server (`fast`: every client's connection is cut, as in a failover); its
        data stays, for `start_process()`."""
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
            "-w", "-t", str(int(STOP_TIMEOUT)), "stop", timeout=STOP_TIMEOUT + 5,
        )

    def start_process(self) -> None:
        """Start the stopped server again, on the same port, with everything it held."""
        self._start_cluster()

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down `down_for` seconds, start again."""
        self.stop_process()
        time.sleep(down_for)
        self.start_process()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the cluster's socket."""
        return self._run(
            str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.sockets), "-p", str(self.port), "-U", "postgres", "-d", database,
            "-At", stdin=sql, timeout=STOP_TIMEOUT,
        )

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self._run(
                    str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                    "-w", "-t", str(int(STOP_TIMEOUT)), "stop", timeout=STOP_TIMEOUT + 5,
                )
            except RuntimeError:
                self._kill_postmaster()
        if not self._cleaned:
            self._cleaned = True
            shutil.rmtree(self.dir, ignore_errors=True)
            if self._reserved:
                self._reserved.release()

    def _kill_postmaster(self) -> None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
