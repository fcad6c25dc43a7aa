#!/usr/bin/env bash
# bench.gpu's transformer-family lines on one lent H100 (or H200): SD 3.5 Medium (28 steps) and
# FLUX.1 schnell (4 steps) at 1024x1024, random weights from alice/configs, times and peak memory
# per line, within about 8 minutes (--budget-s 420 plus start-up). SD 3.5 goes first: the budget is
# shared in turn, and what the smaller model leaves passes to FLUX.1.
#
# The device machine reaches no registry and its image lacks diffusers, gguf and pydantic (its
# transformers is 5.17, torch 2.11, Python 3.12); psutil (read_device_facts) and accelerate (the
# offload lines) are carried too in case it lacks them. Before the run, once, in the repo root here
# (/.whl/ is in .gitignore; bench/device_check.sh uses the same folder):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl diffusers==0.42.1 gguf==0.19.0 pydantic==2.14.3 pydantic-core==2.50.4 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 psutil==7.2.2 accelerate==1.15.0
#
# then the device tool's run with carry [".whl"], timeout_s 600 and the command
#
#   bash bench/device_families.sh
#
# The log also lands in $OUT/bench_families.log. Disk: FLUX.1's folder is 34 GB in bf16 and its
# GGUF line writes 13 GB more; the machine has 64 GiB, so the GGUF line is left out where less
# than 50 GB is free.
set -uo pipefail
source "$(dirname "$0")/device_env.sh"
LOG="${OUT:-/tmp}/bench_families.log"
python3 -c "import torch, diffusers, transformers, gguf, psutil, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'gguf ok')" || exit 1

free_gb=$(df --output=avail -BG /tmp | tail -1 | tr -dc '0-9')
skip=()
if [ "${free_gb:-0}" -lt 50 ]; then
    echo "only ${free_gb} GB free under /tmp: the GGUF line is left out"
    skip=(--skip GGUF)
fi

python3 -m bench.gpu --models sd35-medium,flux1-schnell --runs 2 --budget-s 420 --work-dir /tmp "${skip[@]}" 2>&1 | tee "$LOG"
