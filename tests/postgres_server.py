"""A private PostgreSQL server for tests: Debian's binaries (`make test-tools` installs them),
a throwaway cluster in a temporary folder, a free port on 127.0.0.1, stopped and removed after.

PostgreSQL refuses to run as root, and CI runs as root: then the server runs as `nobody`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import threading
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from harness.ports import free_port
from harness.processes import kill_all, process_tree


def postgres_bin() -> Path | None:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_user() -> dict:
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


class PostgresServer:
    """A cluster in `folder`, served on `port` while started; stop and start it again at will
    (a restart under running replicas, an outage)."""

    def __init__(self, binaries: Path, folder: Path, port: int, user: dict) -> None:
        self.binaries, self.folder, self.port, self.user = binaries, folder, port, user
        self.url = f"postgresql://alice@127.0.0.1:{port}/postgres"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "server.log", "ab")
        self.process = subprocess.Popen(
            [self.binaries / "postgres", "-D", self.folder / "data", "-p", str(self.port), "-k", self.folder,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=100"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **self.user,
        )
        log.close()
        _wait_ready(self.url, self.process, self.folder)

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT)  # a fast shutdown frees its shared memory
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            pass
        kill_all(process_tree(self.process.pid))
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class ServerURL(str):
    """The URL of a test server's `postgres` database; `.server` stops and starts it."""

    server: PostgresServer


@contextlib.contextmanager
def postgres_server() -> Iterator[ServerURL]:
    """Start a server; yields the URL of its `postgres` database (user `alice`, no password)."""
    binaries = postgres_bin()
    assert binaries, "PostgreSQL is not installed (make test-tools installs it)"
    # Not under pytest's tmp_path: its folders are private to root, and the server may be nobody.
    folder = Path(tempfile.mkdtemp(prefix="alice-pg-"))
    user = _as_user()
    if user:
        os.chown(folder, user["user"], user["group"])
    server = PostgresServer(binaries, folder, free_port(), user)
    try:
        subprocess.run(
            [binaries / "initdb", "-D", folder / "data", "-U", "alice", "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120, **user,
        )
        server.start()
        url = ServerURL(server.url)
        url.server = server
        yield url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(url: str, process: subprocess.Popen, folder: Path, timeout: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise AssertionError(f"postgres exited: {(folder / 'server.log').read_text(errors='replace')}")
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def fresh_database(server_url: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def table_locked(url: str, hold_s: float):
    """Another session holds an exclusive lock on the jobs table for `hold_s` (or until the
    block ends): every statement on it waits, as on a database that hangs."""
    import psycopg

    db = psycopg.connect(url)
    db.execute("LOCK TABLE alice_jobs IN ACCESS EXCLUSIVE MODE")
    timer = threading.Timer(hold_s, db.rollback)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with contextlib.suppress(psycopg.Error):
            db.rollback()
        db.close()
