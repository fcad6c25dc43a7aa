"""One device check: everything of ALICE that needs a GPU measured in one run, one report.

    python -m bench.device_check                        # on the GPU, within --budget-s (420 s)
    python -m bench.device_check --transformers sd35-medium,flux1-schnell
    python -m bench.device_check --cpu                  # the same run on the CPU at tiny sizes (the suite runs it)
    bash bench/device_check.sh                          # on a lent device machine: see its header

Sections, in this order (the most wanted first, as the budget may end the run early):
- preset: the card, the dtype and the memory preset `auto` picks for every family
  (alice/engine/presets.py), channels_last, whether compile may run here;
- sd15: SD 1.5 at 512x512, as the server draws it (auto preset), then the same pipeline with
  channels_last the other way (auto turns it on where tensor cores are): time ratio and PSNR;
- sdxl: SDXL at 1024x1024, auto preset, then channels_last the other way, as sd15;
- precision: SD 1.5 in fp32, fp16, fp16 storage with fp32 compute (diffusers' layerwise casting)
  and bf16 on this card, each image against fp32's (PSNR);
- batching: images/s drawing 1, 2, 4 and 8 SD 1.5 images in one call; then the batch
  PipelineCache.images_per_call picks (capped by memory) for SD 1.5 at 512 and SDXL at 1024,
  drawn once: in one call or split, its peak reserved memory against the card's;
- offload: SD 1.5 and SDXL with model and with sequential CPU offload (load_pipeline with
  ALICE_CPU_OFFLOAD), one image of 8 steps each: whether it draws, time, peak reserved memory; a
  layout that fails is an error of its line, its text kept in full in the JSON;
- relayout: the re-layout after running out of memory (PipelineCache.lay_out_cheaper, then
  get_for_size back), SD 1.5 at 512: none -> model offload -> none in place, each re-layout's
  seconds and each image against the first (PSNR);
- memory: bench.memory's GPU figures (where that module is in the tree);
- one section per `--transformers` architecture at 1024x1024, as planned and with group offload
  (SD 3.5 Medium by default; FLUX.1 schnell is 34 GB of random weights to build, write and read
  back: ask for it);
- compile: SD 1.5's UNet compiled as the server does (compiled_unet.compile_and_warm for 512x512,
  1-4 images a call): graphs, warm-up seconds, eager vs compiled time per call, and another size
  drawn eager without a recompile; last and in its own process: Triton's autotuning may take
  minutes, and what it has not finished when the budget ends is killed and reported as timed out.
All of them take longer than the default budget on an H100 (SECTION_SECONDS adds up to about
11 minutes): the run keeps the order above, reports the rest skipped, and `--sections` runs those
next (15 minutes of a lent device hold two runs).
Per line: the median time per call, it/s, images/s, the allocator's peak reserved memory and the
card's use by the driver (bench/card.py), NaN drawings and float32 VAE retries (finite.py), load
and first-call times. The drawings are bench.gpu's: its prompt, seed and scheduler (SD's
dpm++_2m_karras; the transformer families' own), 25 steps for SD, the family's default else.

Every section stands alone: its error (or a card that cannot run it) ends only it, written into the
report with the traceback's last line; a section whose estimated time (SECTION_SECONDS, on an H100)
no longer fits in what is left of `--budget-s` is skipped and reported so. `--isolate` runs
sections in their own process (compile by default on the GPU): a compile that outlasts the budget
is killed there, and a CUDA error that poisons a process stays in that section's.

The report is written after every section, so a run cut short still leaves one: `--out`
(default $OUT, else ./device-check) gets device_check.json (the card, every section's status,
rows and details) and device_check.md (a table to paste into bench/RESULTS.md).

Weights are random (bench/random_pipelines.py, from alice/configs; built on the card where they
fit, else on the CPU): the images mean nothing, speed and memory are the real models'. `--cpu` uses
the demo model for SD 1.5 (64 px) and the architectures shrunk to a few narrow layers for the rest,
1 step, one timed call, batches of 1 and 2, no fp16 line (emulated on the CPU, 10x slower), SDXL's
offload and images_per_call lines left out (the same code as SD 1.5's), the offload layouts and the
re-layout applied with relayout() itself (load_pipeline and PipelineCache offload nothing on the
CPU), and compile's compiled code the UNet's eager forward standing in (inductor's CPU compile
takes minutes): it proves the script runs end to end, not how fast anything is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alice.engine.heap import freeze_imported_objects
from bench import device_layouts, device_sections
from bench.card import card_facts, describe
from bench.device_sections import Context, Outcome, SectionSkipped

# About how long each section takes on an H100 (weights built, saved and loaded included): one is
# skipped when less than this is left. Estimates from the models' sizes (no GPU has run this yet):
# correct them from the report's `seconds` after the first run.
SECTION_SECONDS = {"preset": 5, "sd15": 35, "sdxl": 60, "precision": 60, "batching": 75, "offload": 60,
                   "relayout": 20, "memory": 60, "sd35-medium": 130, "flux1-schnell": 260, "compile": 150}
DEFAULT_TRANSFORMERS = "sd35-medium"
TABLE_COLUMNS = ("section", "line", "s/call", "it/s", "images/s", "reserved GiB", "card GiB", "NaN", "PSNR dB",
                 "notes")


@dataclass
class SectionReport:
    name: str
    status: str = "pending"  # ok, error, skipped
    seconds: float = 0.0
    note: str = ""  # why it was skipped, or the error
    rows: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    process: int = 0  # the id of the process it ran in (--isolate: its own)


def sections(args: argparse.Namespace) -> dict[str, Callable[[Context], Outcome]]:
    chosen: dict[str, Callable[[Context], Outcome]] = {
        "preset": device_sections.preset,
        "sd15": device_sections.sd15,
        "sdxl": device_sections.sdxl,
        "precision": device_sections.precision,
        "batching": device_sections.batching,
        "offload": device_layouts.offload,
        "relayout": device_layouts.relayout_in_place,
        "memory": lambda ctx: device_sections.memory(ctx, args.memory_args.split()),
    }
    for architecture in filter(None, args.transformers.split(",")):
        chosen[architecture] = device_layouts.transformer(architecture)
    chosen["compile"] = device_sections.compile_unet
    return chosen


def run_section(name: str, section: Callable[[Context], Outcome], ctx: Context,
                args: argparse.Namespace) -> SectionReport:
    """One section in this process: its error ends it alone."""
    report = SectionReport(name, process=os.getpid())
    started = time.perf_counter()
    try:
        if args.inject_error == name:
            raise RuntimeError(f"injected error in {name}")
        outcome = section(ctx)
        report.rows, report.details = outcome.rows, outcome.details
        report.status = "ok"
    except SectionSkipped as why:
        report.status, report.note = "skipped", str(why)
    except Exception as error:  # one section's failure must not cost the others their device time
        report.status = "error"
        report.note = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:400] if str(error) else ''}"
        report.details["traceback"] = traceback.format_exc()[-4000:]
        ctx.log(f"{name}: {report.note}; the check goes on")
    finally:
        device_sections.free_memory()
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def run_isolated(name: str, ctx: Context, argv: list[str]) -> SectionReport:
    """One section in a child process running this script with `--only`, killed (its whole group:
    inductor's compile workers too) when it passes what is left of the budget."""
    started = time.perf_counter()
    result = ctx.work_dir / f"section-{name}.json"
    result.unlink(missing_ok=True)
    timeout = max(10.0, ctx.seconds_left)
    # Its own budget ends its lines in time to write its report; the kill, a call that outlasts it.
    command = [sys.executable, "-m", "bench.device_check", *argv, "--only", name, "--section-json", str(result),
               "--work-dir", str(ctx.work_dir), "--budget-s", f"{max(5.0, timeout - 15):.0f}"]
    child = subprocess.Popen(command, start_new_session=True)
    try:
        child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    seconds = round(time.perf_counter() - started, 2)
    if result.exists():
        report = SectionReport(**json.loads(result.read_text(encoding="utf-8")))
        report.seconds = seconds
        return report
    why = f"timed out after {seconds:.0f} s (the budget left)" if child.returncode == -signal.SIGKILL \
        else f"its process exited {child.returncode} without a report"
    ctx.log(f"{name}: {why}; the check goes on")
    return SectionReport(name, "error", seconds, why)


def cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: dict[str, Any]) -> str:
    """The table to paste into bench/RESULTS.md: a caption with the card, a row per line."""
    card = report["card"]
    title = card.get("name") or "CPU"
    lines = [
        f"### Device check: {title}, {report['started'][:10]}",
        "",
        f"{describe(card)}. `python -m bench.device_check {' '.join(report['argv'])}`: "
        f"{report['total_s']:.0f} s of a {report['budget_s']:.0f} s budget; "
        f"NaN drawings {report['nan']['drawings']}, float32 VAE retries {report['nan']['vae_retries']}.",
        "",
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for section in report["sections"]:
        if section["status"] != "ok" and not section["rows"]:
            values = [section["name"], f"**{section['status']}**", *[""] * (len(TABLE_COLUMNS) - 3), section["note"]]
            lines.append("| " + " | ".join(cell(value) for value in values) + " |")
            continue
        for row in section["rows"]:
            status = row.get("status")
            nan = "" if "nan" not in row else str(row["nan"]) + (f" (+{row['vae_retries']} VAE)"
                                                                 if row.get("vae_retries") else "")
            psnr = f"{row['psnr_db']} vs {row['psnr_vs']}" if row.get("psnr_db") else ""
            notes = "; ".join(filter(None, [
                f"**{status}**" if status else "",
                f"{row['size']} px" if row.get("size") else "",
                f"load {row['load_s']} s" if row.get("load_s") is not None else "",
                f"first call {row['first_call_s']} s" if row.get("first_call_s") is not None else "",
                row.get("note", ""),
            ]))
            values = [section["name"], row["line"], row.get("seconds"), row.get("it_per_s"),
                      row.get("images_per_s"), row.get("peak_reserved_gib"), row.get("card_gib"), nan, psnr, notes]
            lines.append("| " + " | ".join(cell(value) for value in values) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for section in report["sections"] for row in section["rows"]]
    report["nan"] = {"drawings": sum(row.get("nan", 0) for row in rows),
                     "vae_retries": sum(row.get("vae_retries", 0) for row in rows)}
    (out / "device_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "device_check.md").write_text(markdown(report), encoding="utf-8")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU at tiny sizes (the suite's check)")
    parser.add_argument("--budget-s", type=float, default=420, help="skip sections that would end after this")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "device-check"),
                        help="where device_check.json and device_check.md go (default $OUT, else ./device-check)")
    parser.add_argument("--work-dir", type=Path, help="where random weights are written (default: a temporary "
                        "folder; SD 3.5 Medium takes 16 GB there, FLUX.1 34 GB)")
    parser.add_argument("--sections", help="only these sections, comma-separated (default: all)")
    parser.add_argument("--skip", action="append", default=[], help="leave out this section (repeatable)")
    parser.add_argument("--transformers", default=DEFAULT_TRANSFORMERS,
                        help="transformer architectures of alice/configs to draw, comma-separated")
    parser.add_argument("--isolate", help="sections run in their own process, comma-separated "
                        "(default: compile on the GPU, none on the CPU)")
    parser.add_argument("--runs", type=int, help="timed calls per line (default: 3 on the GPU, 1 on the CPU)")
    parser.add_argument("--memory-args", default="--device cuda",
                        help="bench.memory's options for its GPU figures (the section adds --write)")
    parser.add_argument("--inject-error", help="raise an error in this section (a test)")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # a child of --isolate: this one section
    parser.add_argument("--section-json", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the check; returns the report it wrote."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    freeze_imported_objects()  # the sections free memory between runs: milliseconds, not 0.35 s a time
    started = time.perf_counter()
    quiet_libraries()
    device = "cpu" if args.cpu else "cuda"
    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: pass --cpu for the CPU run")
    with tempfile.TemporaryDirectory(prefix="device-check-") as scratch:
        ctx = Context(
            device=device, cpu=args.cpu, work_dir=args.work_dir or Path(scratch),
            deadline=started + args.budget_s, runs=args.runs or (1 if args.cpu else 3),
            steps=1 if args.cpu else None, sd_size=64 if args.cpu else 512, sdxl_size=64 if args.cpu else 1024,
            transformer_size=64 if args.cpu else 1024,
        )
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        chosen = sections(args)
        if args.only:
            report = run_section(args.only, chosen[args.only], ctx, args)
            args.section_json.write_text(json.dumps(asdict(report), default=str), encoding="utf-8")
            return asdict(report)
        return run_all(args, argv, ctx, chosen, started)


def run_all(args: argparse.Namespace, argv: list[str], ctx: Context,
            chosen: dict[str, Callable[[Context], Outcome]], started: float) -> dict[str, Any]:
    card = card_facts(ctx.device)
    ctx.log(f"bench.device_check on {describe(card)}; budget {args.budget_s:.0f} s")
    wanted = set(args.sections.split(",")) if args.sections else set(chosen)
    isolated = set(args.isolate.split(",")) if args.isolate is not None else (set() if args.cpu else {"compile"})
    report: dict[str, Any] = {
        "script": "bench.device_check", "version": 1, "argv": argv,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu" if args.cpu else "cuda", "budget_s": args.budget_s, "total_s": 0.0, "card": card,
        "sections": [],
    }
    for name, section in chosen.items():
        if name not in wanted or name in args.skip:
            result = SectionReport(name, "skipped", note="left out (--sections/--skip)")
        elif (needs := 0 if args.cpu else SECTION_SECONDS.get(name, 60)) >= ctx.seconds_left or ctx.seconds_left <= 0:
            estimate = f"; it takes about {needs} s on an H100" if needs else ""
            result = SectionReport(name, "skipped", note=f"{max(0.0, ctx.seconds_left):.0f} s left of --budget-s "
                                   f"{args.budget_s:.0f}{estimate}")
        elif name in isolated:
            ctx.log(f"{name} (own process) ...")
            result = run_isolated(name, ctx, argv)
        else:
            ctx.log(f"{name} ...")
            result = run_section(name, section, ctx, args)
        ctx.log(f"{name}: {result.status} in {result.seconds:.0f} s {result.note}".rstrip())
        report["sections"].append(asdict(result))
        report["total_s"] = round(time.perf_counter() - started, 1)
        write_report(args.out, report)
    ctx.log(f"report: {args.out / 'device_check.json'} and {args.out / 'device_check.md'}; "
            f"total {report['total_s']:.0f} s")
    print((args.out / "device_check.md").read_text(encoding="utf-8"), flush=True)
    return report


def quiet_libraries() -> None:
    """No progress bars or per-load notices between the sections' lines."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


if __name__ == "__main__":
    main()
