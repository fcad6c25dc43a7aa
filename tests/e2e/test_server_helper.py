"""The suite's own server plumbing (harness/, tests/server_guard.py): whatever a test
starts is stopped, BentoML's worker included, and only this session's servers are touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.environment import ROOT, alice_environment
from harness.processes import kill_all, marked_processes
from harness.server import ServerProcess

pytestmark = pytest.mark.e2e


def wait_for_worker(server: ServerProcess, timeout: float = 600) -> None:
    """Until `bentoml serve` has started its worker (a process of its own session)."""
    deadline = time.monotonic() + timeout
    while not any("_bentoml_impl.worker" in " ".join(p.cmdline()) for p in server._processes()):
        assert server.process.poll() is None, server.log()
        assert time.monotonic() < deadline, f"no worker after {timeout} s:\n{server.log()}"
        time.sleep(0.1)


def test_close_stops_the_worker_after_the_server_process_died(tmp_path):
    """The worker outlives a killed `bentoml serve` (it runs in a session of its own, and is
    no descendant of anything once its parent is gone); closing the server still stops it."""
    with alice_environment(tmp_path, {}):
        server = ServerProcess(tmp_path / "server.log")
        try:
            wait_for_worker(server)
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait(30)
            assert len(marked_processes(server.mark)) == 1  # the orphaned worker
        finally:
            server.close()
        assert marked_processes(server.mark) == []


def test_the_session_stops_and_reports_a_server_a_test_left_running(tmp_path):
    mark_file = tmp_path / "mark"
    test_file = tmp_path / "test_leak.py"
    test_file.write_text(textwrap.dedent(f"""
        from pathlib import Path

        from tests.e2e.test_server_helper import wait_for_worker
        from harness.environment import alice_environment
        from harness.server import ServerProcess


        def test_forgets_its_server(tmp_path):
            with alice_environment(tmp_path, {{}}):
                server = ServerProcess(tmp_path / "server.log")  # never closed
                Path({str(mark_file)!r}).write_text(server.mark)
                wait_for_worker(server)
    """))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "tests.server_guard", "-p", "no:cacheprovider", "-q",
             str(test_file)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
        mark = mark_file.read_text()
        assert "1 passed" in done.stdout, done.stdout + done.stderr
        assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout + done.stderr
        assert "this session left 2 bentoml processes running (now killed)" in done.stdout, done.stdout
        assert marked_processes(mark) == []
    finally:
        if mark_file.exists():
            kill_all(marked_processes(mark_file.read_text()))  # what an unguarded session would leave
