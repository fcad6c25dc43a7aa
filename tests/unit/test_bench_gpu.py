"""bench.gpu end to end on the CPU at tiny size: every line is printed, its numbers agree with each
other (min <= median <= max, images/s and the ratios from the medians), matched lines draw the
same image (PSNR against the reference line), and an out-of-memory error or any other error in one
line ends only that line; the transformer families' lines (FLUX.1 schnell and SD 3.5 Medium, shrunk
by --tiny) too, the GGUF line's file a Q8_0 GGUF that ALICE loads quantized."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from alice.engine.demo import DEMO_MODEL_DIR
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.transformer_files import read_transformer_file
from bench import gpu
from bench.gguf_q8 import gguf_pipeline_folder
from bench.random_pipelines import CONFIGS, build, build_device, random_pipeline_folder

DEMO_LINES = {"diffusers fp32", "diffusers fp16", "ALICE bare (float32)", "+ channels_last",
              "+ attention slicing", "+ VAE tiling (32 px)", "+ model offload", "ALICE auto (the server)"}
TRANSFORMER_LINES = {"diffusers bf16", "diffusers fp16", "ALICE bare (float32)", "+ model offload",
                     "+ group offload", "ALICE auto (the server)"}

# A result row of bench.gpu's table: label, median s, min, max, images/s, "x" ratio to diffusers
# fp32, for a "+" line its "x" ratio to ALICE bare, reserved and card GiB ("-" on the CPU), load s,
# first call s, PSNR against its reference line ("same", dB, or "-" for the reference itself).
NUMBER = r"(\d+\.\d+)"
ROW = (rf"^  (\S.*?)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+x{NUMBER}(?:\s+x{NUMBER})?"
       rf"\s+-\s+-\s+{NUMBER}\s+{NUMBER}\s+(same|\d+\.\d|-)(?: vs (.+))?$")


@dataclass
class Row:
    label: str
    median: float
    fastest: float
    slowest: float
    images_per_s: float
    vs_fp32: float
    vs_bare: float | None
    psnr: float | None  # dB against `image_of`; inf: the same image
    image_of: str | None

    @classmethod
    def parse(cls, fields: tuple[str, ...]) -> Row:
        label, median, fastest, slowest, per_s, vs_fp32, vs_bare, _load, _first, psnr, image_of = fields
        decibels = None if psnr == "-" else math.inf if psnr == "same" else float(psnr)
        return cls(label, float(median), float(fastest), float(slowest), float(per_s), float(vs_fp32),
                   float(vs_bare) if vs_bare else None, decibels, image_of or None)


def rounding_slack(quotient: float, printed_to: float, *medians: float) -> float:
    """How far a printed quotient of medians (rounded to `printed_to`) may be from the one
    recomputed from the printed medians (each rounded to 0.001): a printed median m stands for one
    as small as m - 0.0005, so the quotient's relative error is up to 0.0005 / (m - 0.0005) (at
    m = 0.033, 1.54 %: a 32.5 ms median printed 0.033 is 30.77 images/s, not 30.30)."""
    return printed_to / 2 + quotient * sum(0.0005 / (median - 0.0005) for median in medians) + 1e-9


def table(out: str, title: str) -> dict[str, Row]:
    """The rows of the table printed under `title`."""
    section = out.split(f"{title}\n  line ")[1].split("\n\n")[0]
    section = re.split(r"^\S", section, flags=re.MULTILINE)[0]  # up to the next unindented line
    return {row.label: row for row in map(Row.parse, re.findall(ROW, section, re.MULTILINE))}


def check_consistent(rows: dict[str, Row], reference_label: str, out: str) -> None:
    """Each row's min <= median <= max, and its images/s and ratios are those of the medians."""
    reference, bare = rows[reference_label], rows["ALICE bare (float32)"]
    for row in rows.values():
        assert 0 < row.fastest <= row.median <= row.slowest and math.isfinite(row.slowest), (row, out)
        per_s, vs_ref = 1 / row.median, reference.median / row.median
        assert row.images_per_s == pytest.approx(per_s, abs=rounding_slack(per_s, 0.001, row.median)), (row, out)
        assert row.vs_fp32 == pytest.approx(vs_ref, abs=rounding_slack(vs_ref, 0.01, reference.median, row.median)), (
            row, out)
        # Each "+ option" line, and the server's own choice, is also set against ALICE bare.
        assert (row.vs_bare is not None) == row.label.startswith(("+", "ALICE auto")), (row, out)
        if row.vs_bare is not None:
            vs_bare = bare.median / row.median
            assert row.vs_bare == pytest.approx(vs_bare, abs=rounding_slack(vs_bare, 0.01, bare.median, row.median)), (
                row, out)
    assert reference.vs_fp32 == 1.0


def test_the_gpu_benchmark_runs_every_line_and_survives_an_out_of_memory_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    # torch.compile's CPU backend builds C++ for minutes on this machine: that line is left out here.
    # An OOM and another error (what bf16 raises on a card without it) each end only their line.
    gpu.main(["--cpu", "--model-dir", str(DEMO_MODEL_DIR), "--size", "64", "--steps", "2", "--runs", "2",
              "--skip", "compile", "--inject-oom", "+ sequential offload", "--inject-error", "diffusers bf16"])
    out = capsys.readouterr().out
    assert out.startswith("bench.gpu on CPU ("), out  # the run says what it ran on
    rows = table(out, "demo_model 64x64")
    assert set(rows) == DEMO_LINES, out
    check_consistent(rows, "diffusers fp32", out)
    assert re.search(r"^  \+ sequential offload\s+OOM$", out, re.MULTILINE), out
    assert "+ sequential offload: out of memory (injected" in out
    assert re.search(r"^  diffusers bf16\s+error$", out, re.MULTILINE), out
    assert "diffusers bf16: RuntimeError: injected error in diffusers bf16" in out
    assert "+ compile" not in out.split("demo_model 64x64")[1]
    # Matched lines draw the same picture: ALICE bare is diffusers' own fp32 pipeline to the bit,
    # and the options that do nothing on the CPU (channels_last, offload) change no bit of it.
    images = {label: (row.psnr, row.image_of) for label, row in rows.items()}
    assert images["diffusers fp32"] == (None, None)
    for label in ("ALICE bare (float32)", "+ channels_last", "+ model offload", "ALICE auto (the server)"):
        reference = "diffusers fp32" if label.startswith("ALICE bare") else "ALICE bare (float32)"
        assert images[label] == (math.inf, reference), out
    # Tiles of 32 px decode a 64 px image in four blended tiles: close to the whole decode, not the
    # same (a line that tiles nothing would be "same"). Slicing reorders attention's arithmetic.
    tiled, _ = images["+ VAE tiling (32 px)"]
    assert 15 < tiled < math.inf, out
    sliced, _ = images["+ attention slicing"]
    assert sliced > 40, out
    assert "demo_model 64x64: scheduler dpm++_2m_karras, 2 steps, guidance 7.5, seed 1234; 2 interleaved rounds" in out
    assert re.search(r"^total \d+ s$", out, re.MULTILINE)


def test_the_transformer_families_lines_run_line_by_line(capsys: pytest.CaptureFixture[str]) -> None:
    gpu.main(["--cpu", "--tiny", "--models", "flux1-schnell,sd35-medium", "--size", "64", "--steps", "2",
              "--runs", "2"])
    out = capsys.readouterr().out
    flux = table(out, "flux1-schnell tiny architecture (random weights) 64x64")
    sd35 = table(out, "sd35-medium tiny architecture (random weights) 64x64")
    # Every line ran (a failed one prints OOM or error instead of a row); the GGUF line is FLUX's.
    assert set(flux) == TRANSFORMER_LINES | {"+ GGUF Q8_0 transformer"}, out
    assert set(sd35) == TRANSFORMER_LINES, out
    check_consistent(flux, "diffusers bf16", out)
    check_consistent(sd35, "diffusers bf16", out)
    # The family's own drawing defaults, here with 2 steps; the transformer families line by line.
    assert ("flux1-schnell tiny architecture (random weights) 64x64: scheduler flow-euler, 2 steps, guidance 0, "
            "seed 1234; 2 runs a line, line by line") in out
    assert "sd35-medium tiny architecture (random weights) 64x64: scheduler flow-euler, 2 steps, guidance 7," in out
    assert re.search(r"^  \+ GGUF Q8_0 transformer: transformer written as GGUF Q8_0 \(\d+\.\d+ GB\) in \d+ s$",
                     out, re.MULTILINE), out
    assert re.search(r"^  \+ GGUF Q8_0 transformer: flux1-schnell \(GGUF transformer", out, re.MULTILINE), out
    assert "error" not in out and "failed" not in out, out


def test_q8_0_gives_the_gguf_packages_bytes() -> None:
    import gguf

    from bench.gguf_q8 import q8_0

    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(64, 256, generator=generator) * 3
    weights[0, :32] = 0  # a block of zeros: scale 0, no division by it
    weights[1, :32] = torch.arange(32) * 0.5 - 8  # halves, which C's roundf rounds away from zero
    weights = weights.to(torch.bfloat16)  # as the saved random weights are
    expected = gguf.quants.quantize(weights.float().numpy(), gguf.GGMLQuantizationType.Q8_0)
    assert np.array_equal(q8_0(weights), expected)


def test_the_gguf_folder_loads_quantized_and_draws_the_same_model(tmp_path: Path) -> None:
    folder = random_pipeline_folder("flux1-schnell", tmp_path / "flux", "cpu", torch.bfloat16, tiny=True)
    out = gguf_pipeline_folder(folder, tmp_path / "flux-gguf", "cpu")
    assert sorted(p.name for p in (out / "transformer").iterdir()) == ["config.json", "flux-Q8_0.gguf"]
    file = read_transformer_file(out / "transformer" / "flux-Q8_0.gguf")
    assert file.family == "flux1-schnell" and "Q8_0" in file.quant_types
    # Every other part is the base folder's own file, hard-linked: only the GGUF takes disk.
    others = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.parts[-2] != "transformer"]
    assert len(others) > 10 and all((out / p).stat().st_ino == (folder / p).stat().st_ino for p in others)

    def draw(source: Path) -> tuple[np.ndarray, set[str]]:
        pipe = load_pipeline(source, choose_placement("cpu"))
        kinds = {type(p).__name__ for p in pipe.transformer.parameters()}
        image = pipe("a red circle", num_inference_steps=2, height=64, width=64, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images[0]
        return np.asarray(image, dtype=np.float64), kinds

    reference, plain = draw(folder)
    quantized, kinds = draw(out)
    assert "GGUFParameter" in kinds and "GGUFParameter" not in plain  # it stays quantized in memory
    # Q8_0 of the same weights: close to the 16-bit model's image (measured 63 dB; a wrong block
    # layout draws noise, under 15 dB).
    psnr = 10 * np.log10(1.0 / max(np.mean((reference - quantized) ** 2), 1e-20))
    assert psnr > 40, psnr


def test_lines_that_would_pass_the_budget_are_reported_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    gpu.main(["--cpu", "--tiny", "--models", "sd35-medium", "--size", "64", "--steps", "1", "--budget-s", "0"])
    out = capsys.readouterr().out
    section = out.split("sd35-medium tiny architecture (random weights) 64x64\n")[1]
    skipped = re.findall(r"^  (\S.*?)\s+skipped: over --budget-s$", section, re.MULTILINE)
    assert set(skipped) == TRANSFORMER_LINES, out


def test_random_weights_are_built_on_the_cpu_where_the_card_cannot_hold_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    # A GTX 1060 (6 GiB) with 5.5 GiB free after its CUDA context, as torch would report it.
    gib = 1024**3
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(5.5 * gib), 6 * gib))
    with torch.device("meta"):
        unet = sum(p.numel() for p in build(UNet2DConditionModel, "diffusers", CONFIGS / "sdxl" / "unet",
                                            {}).parameters())
        clip = sum(p.numel() for p in build(CLIPTextModel, "transformers", CONFIGS / "sdxl" / "text_encoder",
                                            {}).parameters())
    assert 2.5e9 < unet < 2.6e9 and 1.2e8 < clip < 1.3e8  # the released SDXL's UNet and CLIP ViT-L
    # SDXL's UNet is 5.1 GB in fp16: built on the card it would run out of memory there.
    assert build_device("cuda", unet * 2) == "cpu"
    assert build_device("cuda", clip * 2) == "cuda"
    assert build_device("cpu", clip * 2) == "cpu"
