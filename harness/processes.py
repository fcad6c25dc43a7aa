"""The processes a session started: marked in their environment, found and killed by the mark."""

from __future__ import annotations

import contextlib
import itertools
import uuid

import psutil

# Each server the tests start carries a mark in its environment, which its processes inherit:
# "<session>/<number>", the session being this importing process (a pytest run, a bench). By the
# mark a server's processes are found even once BentoML's worker, which runs in a session of its
# own, has lost its parent; and the end of a test session finds what it left behind without
# touching anyone else's servers on a shared machine (tests/server_guard.py).
SERVER_MARK = "TESTS_SERVER_MARK"
SESSION = uuid.uuid4().hex
_server_numbers = itertools.count(1)


def next_server_mark() -> str:
    """The mark for the next server this session starts."""
    return f"{SESSION}/{next(_server_numbers)}"


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all it started (while they are still its descendants)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def marked_processes(mark: str, *, prefix: bool = False) -> list[psutil.Process]:
    """This user's processes whose SERVER_MARK is `mark` (or starts with it)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):  # gone meanwhile, or another user's
            value = process.environ().get(SERVER_MARK)
            if value is not None and (value.startswith(mark) if prefix else value == mark):
                found.append(process)
    return found


def kill_all(processes: list[psutil.Process], timeout: float = 30) -> None:
    """SIGKILL to each process; waits until they are gone."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=timeout)
