"""bench.gpu end to end on the CPU at tiny size: every line is printed, and an out-of-memory
error in one line ends only that line."""

from __future__ import annotations

import re

import pytest

from alice.engine.demo import DEMO_MODEL_DIR
from bench import gpu


def test_the_gpu_benchmark_runs_every_line_and_survives_an_out_of_memory_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    # torch.compile's CPU backend builds C++ for minutes on this machine: that line is left out here.
    gpu.main(["--cpu", "--model-dir", str(DEMO_MODEL_DIR), "--size", "64", "--steps", "2", "--runs", "2",
              "--skip", "compile", "--inject-oom", "+ VAE tiling"])
    out = capsys.readouterr().out
    number = r"\s+\d+\.\d{3}"
    for label in ("diffusers fp32", "diffusers fp16", "diffusers bf16", r"ALICE bare \(float32\)", r"\+ channels_last",
                  r"\+ attention slicing", r"\+ model offload", r"\+ sequential offload", r"ALICE auto \(the server\)"):
        # median, min, max, images/s, then the ratio to diffusers fp32
        assert re.search(rf"^  {label}\s+{number}{number}{number}{number}\s+x\d+\.\d\d", out, re.MULTILINE), (label, out)
    assert re.search(r"^  \+ VAE tiling\s+OOM$", out, re.MULTILINE), out
    assert "+ VAE tiling: out of memory (injected" in out
    assert "+ compile" not in out.split("demo_model 64x64")[1]
    assert "scheduler dpm++_2m_karras, 2 steps, seed 1234, 2 interleaved rounds" in out
    assert re.search(r"^total \d+ s$", out, re.MULTILINE)
