"""bench.device_check end to end on the CPU (demo model at 64 px, tiny SDXL and SD 3.5 Medium, one
step), so the run prepared for the first lent GPU cannot rot: every section reports, an error or a
missing compiler ends only its section, an isolated section runs in its own process, sections past
the budget are reported skipped, and the JSON report and the Markdown table agree."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from bench import device_check

SECTIONS = ["preset", "sd15", "sdxl", "precision", "batching", "memory", "sd35-medium", "compile"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("device-check")
    # No C++ compiler for inductor (its CPU build takes minutes): compile is refused, in its own process.
    previous = os.environ.get("CXX")
    os.environ["CXX"] = str(out / "no-such-compiler")
    try:
        device_check.main(["--cpu", "--out", str(out), "--isolate", "compile", "--inject-error", "memory"])
    finally:
        if previous is None:
            os.environ.pop("CXX")
        else:
            os.environ["CXX"] = previous
    return json.loads((out / "device_check.json").read_text(encoding="utf-8")), out


def sections(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {section["name"]: section for section in report["sections"]}


def rows(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["line"]: row for row in section["rows"]}


def test_every_section_reports_and_an_error_ends_only_its_own(report: tuple[dict[str, Any], Path]) -> None:
    data, _ = report
    assert data["script"] == "bench.device_check" and data["mode"] == "cpu" and data["version"] == 1
    assert data["card"]["device"] == "cpu" and data["card"]["torch"]
    assert [section["name"] for section in data["sections"]] == SECTIONS
    by_name = sections(data)
    assert {name: section["status"] for name, section in by_name.items()} == {
        **dict.fromkeys(SECTIONS, "ok"), "compile": "skipped", "memory": "error"}, data
    assert by_name["memory"]["note"] == "RuntimeError: injected error in memory"
    assert "injected error in memory" in by_name["memory"]["details"]["traceback"]
    # Refused for want of a compiler, said in the child process it ran in; the rest ran here.
    assert by_name["compile"]["note"].startswith("torch.compile needs a C++ compiler"), by_name["compile"]
    assert by_name["compile"]["process"] not in (0, os.getpid())
    assert all(section["process"] == os.getpid() for name, section in by_name.items() if name != "compile")
    assert data["total_s"] >= sum(section["seconds"] for section in data["sections"]) * 0.99
    assert data["nan"] == {"drawings": 0, "vae_retries": 0}


def test_the_drawing_sections_measure_what_they_say(report: tuple[dict[str, Any], Path]) -> None:
    by_name = sections(report[0])
    drawn = [rows(by_name[name])["ALICE auto"] for name in ("sd15", "sdxl", "sd35-medium")]
    precision = rows(by_name["precision"])
    assert precision.pop("fp16")["status"] == "skipped"  # on the CPU only: emulated, 10x slower than fp32
    for row in drawn + list(precision.values()) + list(rows(by_name["batching"]).values()):
        batch = int(row["line"].split()[-1]) if row["line"].startswith("batch") else 1
        assert row["runs"] == 1 and row["seconds"] > 0 and row["nan"] == 0 and row["size"] == 64, row
        assert row["it_per_s"] == pytest.approx(1 / row["seconds"], rel=0.01), row  # one step
        assert row["images_per_s"] == pytest.approx(batch / row["seconds"], rel=0.01), row
        assert row["peak_reserved_gib"] is None and row["card_gib"] is None  # no card
    assert list(rows(by_name["precision"])) == ["fp32", "fp16", "fp16 storage, fp32 compute", "bf16"]
    assert "psnr_db" not in precision["fp32"]
    # The demo's weights are fp16 already, so storing them in fp16 loses nothing: computed in fp32
    # the image is fp32's to the bit, while bf16 arithmetic changes it a little.
    assert precision["fp16 storage, fp32 compute"]["psnr_db"] == "same"
    # Norms and embeddings stay fp32 (diffusers' default skip patterns): the rest is stored in fp16.
    assert precision["fp16 storage, fp32 compute"]["note"] == "UNet weights stored in float16, float32"
    # The same picture, not the same pixels (18.8 dB: the prompt's 18 demo tokens are read in two chunks).
    assert 15 < float(precision["bf16"]["psnr_db"]) < math.inf and precision["bf16"]["psnr_vs"] == "fp32"
    assert list(rows(by_name["batching"])) == ["batch 1", "batch 2"]
    preset = rows(by_name["preset"])
    assert preset["auto"]["note"].startswith("dtype float32; channels_last off; compile: ")
    assert set(preset) == {"auto", "sd15", "sdxl", "sd3", "flux1-schnell"}
    assert set(by_name["preset"]["details"]["presets"]) >= {"sd15", "sd2", "sdxl", "sd3", "flux1-schnell"}


def test_the_markdown_table_has_a_row_per_line(report: tuple[dict[str, Any], Path]) -> None:
    data, out = report
    table = (out / "device_check.md").read_text(encoding="utf-8")
    assert table.startswith(f"### Device check: CPU, {data['started'][:10]}\n")
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = "| " + " | ".join(device_check.TABLE_COLUMNS) + " |"
    assert lines[0] == header and lines[1] == "|" + "---|" * len(device_check.TABLE_COLUMNS)
    cells = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in lines[2:]]
    assert all(len(row) == len(device_check.TABLE_COLUMNS) for row in cells), table
    expected = [(section["name"], row["line"]) for section in data["sections"] for row in section["rows"]]
    expected += [(section["name"], f"**{section['status']}**") for section in data["sections"] if not section["rows"]]
    assert sorted((row[0], row[1]) for row in cells) == sorted(expected), table
    sd15 = next(row for row in cells if row[:2] == ["sd15", "ALICE auto"])
    assert float(sd15[2]) == rows(sections(data)["sd15"])["ALICE auto"]["seconds"]
    assert "RuntimeError: injected error in memory" in table


def test_sections_past_the_budget_are_reported_skipped(tmp_path: Path) -> None:
    data = device_check.main(["--cpu", "--out", str(tmp_path), "--budget-s", "0"])
    assert [(section["name"], section["status"], section["note"]) for section in data["sections"]] == [
        (name, "skipped", "0 s left of --budget-s 0") for name in SECTIONS]
    assert json.loads((tmp_path / "device_check.json").read_text(encoding="utf-8"))["sections"] == data["sections"]


def test_a_gpu_report_renders_its_card_and_memory() -> None:
    # What card_facts and a drawing section give on a card (none here), through the same writer.
    card = {"device": "cuda", "torch": "2.11.0", "diffusers": "0.42.1", "transformers": "5.17.0", "python": "3.12",
            "host": "x86_64", "cpu_threads": 16, "name": "NVIDIA GeForce GTX 1060 6GB", "capability": "6.1",
            "total_gib": 5.93, "free_gib_at_start": 5.5, "multiprocessors": 10, "arch_list": ["sm_60", "sm_70"],
            "driver": "580.95.05", "cuda": "12.6", "cudnn": 90501, "bf16_supported": True,
            "tf32": {"matmul_allow_tf32": False, "cudnn_allow_tf32": True}}
    row = {"line": "fp16", "seconds": 9.5, "runs": 3, "it_per_s": 2.632, "images_per_s": 0.105,
           "peak_reserved_gib": 2.51, "card_gib": 2.93, "nan": 1, "vae_retries": 1, "load_s": 4.2,
           "first_call_s": 11.0, "size": 512, "psnr_db": "31.2", "psnr_vs": "fp32"}
    report = {"argv": [], "started": "2026-12-08T10:00:00+00:00", "total_s": 400.0, "budget_s": 420.0, "card": card,
              "sections": [{"name": "precision", "status": "ok", "seconds": 60.0, "note": "", "rows": [row],
                            "details": {}, "process": 1}],
              "nan": {"drawings": 1, "vae_retries": 1}}
    table = device_check.markdown(report)
    assert table.startswith("### Device check: NVIDIA GeForce GTX 1060 6GB, 2026-12-08\n"), table
    assert "compute capability 6.1" in table and "driver 580.95.05, CUDA 12.6, cuDNN 90501" in table
    assert "(kernels for sm_60 sm_70)" in table and "cudnn_allow_tf32 True" in table
    assert ("| precision | fp16 | 9.5 | 2.632 | 0.105 | 2.51 | 2.93 | 1 (+1 VAE) | 31.2 vs fp32 | "
            "512 px; load 4.2 s; first call 11.0 s |") in table, table
