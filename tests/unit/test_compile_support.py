"""Where ALICE_COMPILE_UNET compiles the UNet: Triton's cards (compute capability 7.0+) and the
CPU (inductor's C++ backend); elsewhere the UNet runs eager and the log says why."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from alice.engine.demo import save_untrained_demo
from alice.engine.device import DeviceFacts, MemoryOptions, MemoryPreset
from alice.engine.pipelines import DevicePlacement, compile_refusal, host_compiler, load_pipeline, unet_is_compiled

GiB = 1024**3


def card(capability: tuple[int, int], name: str = "a card") -> DeviceFacts:
    return DeviceFacts(device="cuda:0", name=name, capability=capability, total_memory=6 * GiB)


@pytest.mark.parametrize("capability", [(5, 2), (6, 0), (6, 1)])
def test_no_compile_before_volta(capability):
    reason = compile_refusal(card(capability, "NVIDIA GeForce GTX 1060 6GB"))
    assert reason and "7.0" in reason and f"{capability[0]}.{capability[1]}" in reason and "GTX 1060" in reason


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (8, 6), (9, 0), (12, 0)])
def test_compile_from_volta_on(capability):
    assert compile_refusal(card(capability)) is None


def test_compile_on_the_cpu_but_not_under_sequential_offload():
    assert compile_refusal(DeviceFacts()) is None
    assert "sequential" in compile_refusal(card((8, 9)), cpu_offload="sequential")


def test_no_compile_without_the_compiler_its_backend_runs(monkeypatch, tmp_path):
    assert "C++ compiler" in compile_refusal(DeviceFacts(), compiler_found=False)
    assert "C compiler" in compile_refusal(card((8, 9)), compiler_found=False)
    # What the host has: nothing on an empty PATH; CXX/CC when they name a compiler there.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.delenv("CC", raising=False)
    assert host_compiler(gpu=False) is None and host_compiler(gpu=True) is None
    for name in ("my-g++", "gcc"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("CXX", "my-g++")
    assert host_compiler(gpu=False) == str(tmp_path / "my-g++")
    assert host_compiler(gpu=True) == str(tmp_path / "gcc")


def test_load_pipeline_compiles_in_place_only_where_it_can(tmp_path: Path, caplog):
    """Compiling is lazy, so this costs no compile: a UNet compiled in place stays the diffusers
    model (peft's LoRA loading needs it), with its weights frozen (peft freezes them when a LoRA
    loads, and dynamo would recompile on the change)."""
    save_untrained_demo(tmp_path)
    preset = MemoryPreset("sd15", "none", None, False, False)
    options = MemoryOptions(compile_unet=True)
    on_cpu = load_pipeline(tmp_path, DevicePlacement("cpu", torch.float32), options, preset)
    assert unet_is_compiled(on_cpu) and type(on_cpu.unet).__name__ == "UNet2DConditionModel"
    assert not any(p.requires_grad for p in on_cpu.unet.parameters())

    # A Pascal card, faked: its facts say so while the weights stay on the CPU.
    pascal = DevicePlacement("cpu", torch.float32, facts=card((6, 1), "NVIDIA GeForce GTX 1060 6GB"))
    with caplog.at_level(logging.WARNING, logger="alice.engine"):
        logging.getLogger("alice.engine").addHandler(caplog.handler)  # the alice logger may not propagate
        try:
            eager = load_pipeline(tmp_path, pascal, options, preset)
        finally:
            logging.getLogger("alice.engine").removeHandler(caplog.handler)
    assert not unet_is_compiled(eager)
    assert any("7.0" in r.getMessage() and "eager" in r.getMessage() for r in caplog.records)
