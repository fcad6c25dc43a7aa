"""How long each phase of a server's start took, said in one INFO line when the start is over.

The clock starts when the process started (as the kernel recorded it), so the first phase
covers the interpreter, the imports and BentoML's own setup before the service is built.
Under `bentoml serve` the worker process is started by the server's first process, which
imports the service definition first: the line also says how long after that one it was
ready, the cold start an operator waits for.
"""

from __future__ import annotations

import os
import time

import psutil


class StartPhases:
    def __init__(self, first_phase: str) -> None:
        """Begin timing; `first_phase` names what ran from the process's start until now."""
        self._started = started_at(os.getpid())
        self._server_started = _bentoml_serve_started()
        self._last = self._started
        self._phases: list[tuple[str, float]] = []
        self.done(first_phase)

    def done(self, phase: str) -> None:
        """The phase named ends now."""
        now = clock()
        self._phases.append((phase, now - self._last))
        self._last = now

    def summary(self, ready: bool) -> str:
        phases = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self._phases)
        outcome = "ready" if ready else "not ready"
        line = f"start: {phases}; {outcome} {self._last - self._started:.1f} s after the process started"
        if self._server_started is not None:
            line += f", {self._last - self._server_started:.1f} s after `bentoml serve` started"
        return line


def clock() -> float:
    """Seconds on the clock process start times are kept in (see `started_at`)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if _PROC_STAT else time.time()


def started_at(pid: int) -> float:
    """When a process started, on `clock()`. On Linux from its start in clock ticks since
    boot (/proc/PID/stat): psutil's create_time adds the boot time, which /proc/stat gives in
    whole seconds, so it can be up to a second off the wall clock."""
    if _PROC_STAT:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The fields after the command (which may hold spaces), from the third on.
            fields = stat.read().rpartition(")")[2].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    return psutil.Process(pid).create_time()


_PROC_STAT = os.path.exists("/proc/self/stat") and hasattr(time, "CLOCK_BOOTTIME")


def _bentoml_serve_started() -> float | None:
    """When this process's parent started, if it is `bentoml serve` (BentoML's worker)."""
    try:
        parent = psutil.Process(os.getppid())
        command = parent.cmdline()
        if any(part.endswith("bentoml") for part in command) and "serve" in command:
            return started_at(parent.pid)
    except (psutil.Error, OSError):
        pass
    return None
