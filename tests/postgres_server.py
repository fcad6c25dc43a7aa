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
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.support import free_port, kill_all, process_tree


def postgres_bin() -> Path | None:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_user() -> dict:
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the URL of its `postgres` database (user `alice`, no password)."""
    binaries = postgres_bin()
    assert binaries, "PostgreSQL is not installed (make test-tools installs it)"
    # Not under pytest's tmp_path: its folders are private to root, and the server may be nobody.
    folder = Path(tempfile.mkdtemp(prefix="alice-pg-"))
    user = _as_user()
    if user:
        os.chown(folder, user["user"], user["group"])
    data, port = folder / "data", free_port()
    process = None
    try:
        subprocess.run(
            [binaries / "initdb", "-D", data, "-U", "alice", "--auth=trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120, **user,
        )
        log = open(folder / "server.log", "wb")
        process = subprocess.Popen(
            [binaries / "postgres", "-D", data, "-p", str(port), "-k", folder, "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=100"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **user,
        )
        log.close()
        url = f"postgresql://alice@127.0.0.1:{port}/postgres"
        _wait_ready(url, process, folder)
        yield url
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)  # a fast shutdown frees its shared memory
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                pass
            kill_all(process_tree(process.pid))
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
