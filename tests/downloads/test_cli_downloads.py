"""`alice models search|download` against the stand-in sources, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from alice.engine.demo import save_untrained_demo
from harness.lora import write_demo_lora
from tests.downloads.fake_sources import FakeSources, start


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli-sources")
    sources = FakeSources()
    server = start(sources)
    save_untrained_demo(tmp / "tiny-sd", seed=5)
    sources.hf_repos["alice-tests/tiny-sd"] = tmp / "tiny-sd"
    sources.add_civitai_file(201, 2001, "Cli Lora", "LORA", write_demo_lora(tmp / "lora"))
    yield sources
    server.shutdown()


def alice(*args: str, tmp, sources) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "ALICE_DATA_DIR": str(tmp / "data"),
           "HF_ENDPOINT": sources.url, "ALICE_CIVITAI_URL": sources.url}
    return subprocess.run([sys.executable, "-m", "alice", "models", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_search_and_download_from_the_command_line(tmp_path, sources):
    found = alice("search", "huggingface", "tiny", tmp=tmp_path, sources=sources)
    assert found.returncode == 0 and "alice-tests/tiny-sd" in found.stdout, found.stderr
    found = alice("search", "civitai", "--type", "LORA", tmp=tmp_path, sources=sources)
    assert "201  LORA  Cli Lora" in found.stdout, found.stderr
    pipeline = alice("download", "huggingface", "alice-tests/tiny-sd", tmp=tmp_path, sources=sources)
    assert pipeline.returncode == 0, pipeline.stderr
    assert pipeline.stdout.strip().endswith("sd/tiny-sd")
    assert "completed" in pipeline.stderr  # the progress bar's last state
    lora = alice("download", "civitai", "201", "--lora", tmp=tmp_path, sources=sources)
    assert lora.returncode == 0 and lora.stdout.strip().endswith("sd/cli-lora"), lora.stderr
    listing = alice("list", tmp=tmp_path, sources=sources).stdout
    assert "sd/tiny-sd" in listing and "lora/sd15" in listing


def test_a_failed_download_says_why(tmp_path, sources):
    missing = alice("download", "huggingface", "alice-tests/nothing-here", tmp=tmp_path, sources=sources)
    assert missing.returncode == 1 and "cannot list alice-tests/nothing-here" in missing.stderr
