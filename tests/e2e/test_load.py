"""A short headless Locust run of the realistic mix: no request may fail (503 + Retry-After aside)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest

from harness.environment import ROOT, alice_environment
from harness.server import running_server

pytestmark = pytest.mark.e2e


def test_locust_mix_has_no_failures(tmp_path):
    with alice_environment(tmp_path, {"ALICE_API_KEYS": "load-key", "ALICE_QUEUE_SIZE": "2"}), \
            running_server(tmp_path / "server.log") as server:
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "load_tests" / "locustfile.py"), "--headless",
             "-H", server.url, "-u", "6", "-r", "6", "--run-time", "10s", "--stop-timeout", "15",
             "--csv", str(tmp_path / "load"), "--only-summary"],
            env={**os.environ, "ALICE_LOAD_KEY": "load-key"}, capture_output=True, text=True, timeout=180,
        )
        health = __import__("httpx").get(f"{server.url}/health").json()
    rows = {row["Name"]: row for row in csv.DictReader(open(tmp_path / "load_stats.csv"))}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 20, result.stdout[-2000:]
    assert int(total["Failure Count"]) == 0, (result.stdout + result.stderr)[-4000:]
    assert int(rows["/chat/completions"]["Request Count"]) > 0
    assert health["status"] == "ok"
