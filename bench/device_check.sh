#!/usr/bin/env bash
# bench.device_check on one lent GPU (H100, H200, or any card): every section within --budget-s
# (420 s; the script's start and the last section's end fit the 8 minutes), the JSON report and the
# Markdown table written to $OUT after every section, so a run cut short still leaves one.
#
# The device machine reaches no registry and its image lacks diffusers and pydantic (its
# transformers is 5.17, torch 2.11, Python 3.12); psutil (the card's facts) and accelerate (CPU
# offload) are carried too in case it lacks them. Before the run, once, in the repo root here
# (/.whl/ is in .gitignore; bench/device_families.sh uses the same folder):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 gguf==0.19.0 pydantic==2.14.3 pydantic-core==2.50.4 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 psutil==7.2.2 accelerate==1.15.0
#
# then the device tool's run with carry [".whl"], timeout_s 600 and the command
#
#   bash bench/device_check.sh
#
# (FLUX.1 schnell too, where the budget leaves it time: `TRANSFORMERS=sd35-medium,flux1-schnell
# bash bench/device_check.sh`; more options: BUDGET_S, and EXTRA for bench.device_check's own.)
# What comes back: $OUT/device_check.json, $OUT/device_check.md (paste it into bench/RESULTS.md)
# and $OUT/device_check.log. Disk: the random weights go under /tmp, one family at a time (SD 3.5
# Medium 16 GB, FLUX.1 34 GB); the machine has 64 GiB.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
OUT="${OUT:-/tmp/device-check}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
python3 -c "import torch, diffusers, transformers, pydantic, psutil, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" || exit 1

# The hard stop leaves the run tool's 600 s a margin; the report on disk is the last section's.
timeout -k 10 560 python3 -m bench.device_check --budget-s "${BUDGET_S:-420}" --work-dir /tmp/device-check-weights \
    --transformers "${TRANSFORMERS:-sd35-medium}" --out "$OUT" ${EXTRA:-} 2>&1 | tee "$LOG"
rm -rf /tmp/device-check-weights
