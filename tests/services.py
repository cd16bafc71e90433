"""Real Redis and PostgreSQL for tests: the Debian packages' servers (`make test` installs
them), each started on 127.0.0.1 and a free port in a temporary directory, stopped by its PID.

PostgreSQL refuses to run as root, so when the tests run as root its processes run as
`nobody`, in a directory `nobody` owns. Session fixtures `redis_url` and `postgres_url` (a
server per session); `fresh_database(postgres_url)` makes an empty database for one test."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import stop_process

__all__ = [
    "Postgres",
    "Redis",
    "fresh_database",
    "postgres_url",
    "redis_url",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited early:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not listen in {timeout}s")


class Redis:
    """`redis-server` with no persistence on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmr-redis-"))
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = self.dir / "redis.log"
        binary = shutil.which("redis-server")
        assert binary, "redis-server missing: run `make test` (apt-get install redis-server)"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.dir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_port(self.port, self.proc, self.log, 20)

    def stop(self) -> None:
        stop_process(self.proc, 10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    assert found[-1], "postgresql missing: run `make test` (apt-get install postgresql)"
    return found[-1]


class Postgres:
    """A PostgreSQL cluster (trust auth, user `postgres`) on 127.0.0.1:<free port>; the server
    process is the `postgres` we start, stopped by its PID (SIGINT: fast shutdown)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmr-pg-"))
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.log = self.dir / "postgres.log"
        data = self.dir / "data"
        user: str | None = None
        if os.geteuid() == 0:
            user = "nobody"
            shutil.chown(self.dir, user)
        subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            user=user,
            cwd=self.dir,
        )
        with self.log.open("wb") as out:
            if user:
                shutil.chown(self.log, user)
            self.proc = subprocess.Popen(
                [
                    _pg_bin("postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-k",
                    str(self.dir),
                    "-c",
                    "fsync=off",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=user,
                cwd=self.dir,
            )
        _wait_port(self.port, self.proc, self.log, 30)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        subprocess.run(
            [
                _pg_bin("psql"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                f"CREATE DATABASE {name}",
            ],
            check=True,
            capture_output=True,
        )
        return self.url.rsplit("/", 1)[0] + "/" + name

    def stop(self) -> None:
        stop_process(self.proc, 10, signal.SIGINT)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: Redis) -> str:
    """A real Redis shared by the session's tests (each test should use its own key names)."""
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: Postgres) -> str:
    """The URL of a real PostgreSQL's `postgres` database, shared by the session's tests."""
    return postgres_server.url


@pytest.fixture
def fresh_database(postgres_server: Postgres) -> str:
    """The URL of a new, empty PostgreSQL database for this test alone."""
    return postgres_server.create_database()
