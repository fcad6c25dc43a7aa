"""bench.device_check end to end on the CPU (demo model at 64 px, tiny SDXL and SD 3.5 Medium, one
step), so the run prepared for the first lent GPU cannot rot: every section reports, an error ends
only its section (or its line), an isolated section runs in its own process, sections past the
budget are reported skipped, and the JSON report and the Markdown table agree."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from bench import device_check

SECTIONS = ["preset", "sd15", "sdxl", "precision", "batching", "offload", "relayout", "memory", "sd35-medium",
            "compile"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("device-check")
    # preset in its own process proves --isolate (a cheap one: a child process pays its imports and
    # the demo's first calls again; compile, isolated on a card, runs here with --cpu's stand-in).
    device_check.main(["--cpu", "--out", str(out), "--isolate", "preset", "--inject-error", "memory"])
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
        **dict.fromkeys(SECTIONS, "ok"), "memory": "error"}, data
    assert by_name["memory"]["note"] == "RuntimeError: injected error in memory"
    assert "injected error in memory" in by_name["memory"]["details"]["traceback"]
    # preset ran in a child process (and said so in its report); the rest ran here.
    assert by_name["preset"]["process"] not in (0, os.getpid())
    assert all(section["process"] == os.getpid() for name, section in by_name.items() if name != "preset")
    assert data["total_s"] >= sum(section["seconds"] for section in data["sections"]) * 0.99
    assert data["nan"] == {"drawings": 0, "vae_retries": 0}


def test_the_drawing_sections_measure_what_they_say(report: tuple[dict[str, Any], Path]) -> None:
    by_name = sections(report[0])
    drawn = [rows(by_name[name])["ALICE auto"] for name in ("sd15", "sdxl", "sd35-medium")]
    precision = rows(by_name["precision"])
    assert precision.pop("fp16")["status"] == "skipped"  # on the CPU only: emulated, 10x slower than fp32
    for row in drawn + list(precision.values()) + list(rows(by_name["batching"]).values()):
        batch = row.get("images") or (int(row["line"].split()[-1]) if row["line"].startswith("batch") else 1)
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
    batching = rows(by_name["batching"])
    assert list(batching) == ["batch 1", "batch 2", "images_per_call sd15"]
    # On the CPU images_per_call caps by pixels: --cpu's largest batch, drawn in one call.
    picked = batching["images_per_call sd15"]
    assert picked["images"] == 2 and picked["fits"] is True, picked
    assert picked["note"] == "picks 2 of at most 2 (8 at the default ALICE_MAX_BATCH 8); drawn in one call", picked
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


def test_channels_last_is_drawn_both_ways(report: tuple[dict[str, Any], Path]) -> None:
    # On the CPU auto leaves it off, so the second line turns it on in place: the same drawing.
    for name in ("sd15", "sdxl"):
        auto, other = rows(sections(report[0])[name]).values()
        assert auto["line"] == "ALICE auto" and auto["note"] == "channels_last off", auto
        assert other["line"] == "channels_last on" and other["nan"] == 0 and other["psnr_vs"] == "auto", other
        ratio = other["seconds"] / auto["seconds"]
        assert other["note"] == f"x{ratio:.2f} auto's time per call", other
        # The same picture: NHWC convolutions sum in another order, at most rounding apart.
        assert other["psnr_db"] == "same" or float(other["psnr_db"]) > 50, other


def test_offload_layouts_draw_or_report_their_error(report: tuple[dict[str, Any], Path]) -> None:
    by_name = sections(report[0])
    offload = rows(by_name["offload"])
    assert list(offload) == ["sd15 model offload", "sd15 sequential offload"]
    model = offload["sd15 model offload"]
    assert model["note"] == "layout model" and model["nan"] == 0 and model["seconds"] > 0, model
    # accelerate 1.15's sequential offload with the CPU as execution device fails in
    # set_module_tensor_to_device: an error of that line only, its text kept in full.
    sequential = offload["sd15 sequential offload"]
    assert sequential["status"] == "error" and sequential["note"].startswith("TypeError: "), sequential
    assert "set_module_tensor_to_device" in sequential["traceback"]
    assert "(object data, *, torch.device device = None)" in sequential["error"]
    assert by_name["offload"]["status"] == "ok"
    group = rows(by_name["sd35-medium"])["sd3 group offload"]
    assert group["note"] == "layout group" and group["nan"] == 0 and group["seconds"] > 0, group


def test_a_relayout_in_place_keeps_the_image(report: tuple[dict[str, Any], Path]) -> None:
    relayout = sections(report[0])["relayout"]
    lines = rows(relayout)
    assert list(lines) == ["planned: none", "cheaper: model", "back: none"]
    for line in ("cheaper: model", "back: none"):
        assert lines[line]["psnr_db"] == "same" and lines[line]["psnr_vs"] == "planned", lines[line]
        assert 0 < lines[line]["relayout_s"] < 30
    assert relayout["details"]["via"].startswith("relayout()")


def test_compile_reports_graphs_speed_and_an_eager_other_size(report: tuple[dict[str, Any], Path]) -> None:
    section = sections(report[0])["compile"]
    assert list(rows(section)) == ["eager", "compiled", "other size (128 px)"]
    record = section["details"]["record"]
    # --cpu's stand-in compiles no graph; the routing is the server's: the compiled size went to
    # the compiled call, the other size ran eager, and nothing recompiled.
    assert record["graphs"] == 0 and record["recompiles"] == 0 and record["max_images"] == 2, record
    assert section["details"]["eager_calls_at_other_size"] == 1 and section["details"]["recompiled_at_other_size"] == 0
    assert record["compiled_calls"] == 1, record
    assert rows(section)["compiled"]["note"].startswith("--cpu stand-in, no graph: 0 graph(s) compiled in ")
