"""The end of a test session stops any `bentoml serve` it started and left running, and fails.

Every process the session starts carries the session's mark in its environment (see
SERVER_MARK in harness/processes.py), so only this session's leftovers are found: other people's
servers on a shared machine are never looked at twice. tests/conftest.py installs these hooks;
a session of its own can load them with `-p tests.server_guard`.
"""

from __future__ import annotations

import os

import psutil
import pytest

from harness.processes import SERVER_MARK, SESSION, kill_all, marked_processes

GRACE_S = 10  # a server a fixture is stopping right now


def pytest_configure(config: pytest.Config) -> None:
    os.environ[SERVER_MARK] = SESSION


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = [process for process in marked_processes(SESSION, prefix=True) if _is_bentoml(process)]
    if not left:
        return
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    if not alive:
        return
    described = [f"{process.pid} ({' '.join(_command(process))[:160]})" for process in alive]
    kill_all(alive)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = f"this session left {len(alive)} bentoml processes running (now killed): {'; '.join(described)}"
    if reporter:
        reporter.write_line(message, red=True, bold=True)
    else:
        print(message)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _is_bentoml(process: psutil.Process) -> bool:
    return any("bentoml" in part for part in _command(process))


def _command(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
