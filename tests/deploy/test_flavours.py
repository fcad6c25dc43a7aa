"""The image flavour for GPUs older than Turing: alice:cu126 (bentofile-cu126.yaml) and the
bare-host install's choice of it (deploy/install.sh reads the cards' compute capability).

torch 2.13's PyPI wheels are built for CUDA 13, whose kernels start at compute capability 7.5;
the flavour's lock has torch 2.7.1 with CUDA 12.6, which still carries sm_50, sm_60 and sm_70.
Everything else must be the main image's, pin for pin.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT, ImageBuild, bentofile, pins

MAIN_LOCK = DEPLOY / "requirements-image.txt"
CU126_LOCK = DEPLOY / "requirements-image-cu126.txt"
INSTALL = DEPLOY / "install.sh"


def is_torch_or_cuda(name: str) -> bool:
    """The packages a flavour may change: torch and what its wheel pulls in for the GPU."""
    return name in {"torch", "triton"} or name.startswith(("nvidia-", "cuda-")) and name != "nvidia-ml-py"


def test_the_cu126_lock_is_the_main_lock_but_for_torch_and_its_cuda_wheels() -> None:
    main, cu126 = pins(MAIN_LOCK), pins(CU126_LOCK)
    shared_main = {name: version for name, version in main.items() if not is_torch_or_cuda(name)}
    shared_cu126 = {name: version for name, version in cu126.items() if not is_torch_or_cuda(name)}
    assert shared_cu126 == shared_main, (
        "deploy/requirements-image-cu126.txt is out of step with deploy/requirements-image.txt; "
        "regenerate it with the command at its top"
    )
    assert cu126["torch"] == "2.7.1" and cu126["triton"]
    assert cu126["nvidia-cuda-runtime-cu12"].startswith("12.6.") and cu126["nvidia-cudnn-cu12"]
    assert not [name for name in cu126 if name.endswith("-cu13") or name.startswith("cuda-")]
    # The override file is the one place the flavour names its torch, and the lock says how it was made.
    assert pins(DEPLOY / "torch-cu126.txt") == {"torch": "2.7.1"}
    assert "--override deploy/torch-cu126.txt" in CU126_LOCK.read_text(encoding="utf-8").splitlines()[1]


def test_the_cu126_bentofile_is_the_main_one_but_for_its_name_and_lock() -> None:
    main, cu126 = bentofile(), bentofile("bentofile-cu126.yaml")
    assert cu126["name"] == "alice-cu126"
    assert cu126["python"]["requirements_txt"] == "./deploy/requirements-image-cu126.txt"
    same = {**cu126, "name": main["name"], "python": {**cu126["python"], "requirements_txt": main["python"]["requirements_txt"]}}
    assert same == main


def test_the_cu126_image_installs_the_cu126_torch(image_build_cu126: ImageBuild) -> None:
    requirements = (image_build_cu126.context / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.7\.1$", requirements, re.MULTILINE)
    assert re.search(r"^nvidia-cuda-runtime-cu12==12\.6\.", requirements, re.MULTILINE)
    assert "cuda-toolkit" not in requirements and "-cu13" not in requirements
    assert "nvidia/cuda" not in image_build_cu126.dockerfile  # the same slim base, CUDA from the wheels
    assert image_build_cu126.bento_info["name"] == "alice-cu126"


def test_the_installed_torch_carries_kernels_for_its_flavour() -> None:
    """Read from the build, no GPU needed. The dev venv has the CPU wheel: this runs in a venv
    made from the cu126 lock (docs/deploy.md, "Image flavours", says how)."""
    import torch

    if torch.version.cuda is None:
        pytest.skip(f"torch {torch.__version__} is a CPU build")
    arches = torch._C._cuda_getArchFlags().split()
    if torch.__version__.startswith("2.7.1"):
        # sm_60 code runs on every 6.x card (a GTX 1060 is 6.1); sm_50 on 5.x, sm_70 on Volta.
        assert {"sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"} <= set(arches), arches
    else:
        assert "sm_75" in arches or "sm_80" in arches, arches


def fake_nvidia_smi(folder: Path, capabilities: list[str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    smi = folder / "nvidia-smi"
    lines = "".join(f"{cap}\\n" for cap in capabilities)
    names = "".join(f"GPU {index}: card\\n" for index in range(len(capabilities)))
    smi.write_text(f"""#!/bin/sh
case "$*" in
    *compute_cap*) printf '{lines}' ;;
    -L) printf '{names}' ;;
esac
""")
    smi.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def dry_install(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(["bash", str(INSTALL), "--dry-run", "--python", sys.executable, *args],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


PIP = "-m pip install --quiet --disable-pip-version-check -r "


@pytest.mark.parametrize("capabilities,lock", [
    (["6.1"], "/opt/alice/deploy/requirements-image-cu126.txt"),  # GTX 1060
    (["7.0"], "/opt/alice/deploy/requirements-image-cu126.txt"),  # V100
    (["8.6", "6.1"], "/opt/alice/deploy/requirements-image-cu126.txt"),  # one old card is enough
    (["7.5"], "/opt/alice/requirements.txt"),  # T4, RTX 20xx
    (["8.9", "12.0"], "/opt/alice/requirements.txt"),
])
def test_install_picks_the_flavour_by_the_cards_compute_capability(
        tmp_path: Path, capabilities: list[str], lock: str) -> None:
    steps = dry_install(fake_nvidia_smi(tmp_path / "bin", capabilities))
    assert PIP + lock in steps
    assert f"GPU compute capabilities: {' '.join(capabilities)}" in steps


def test_install_flavour_can_be_forced(tmp_path: Path) -> None:
    env = fake_nvidia_smi(tmp_path / "bin", ["8.6"])
    assert PIP + "/opt/alice/deploy/requirements-image-cu126.txt" in dry_install(env, "--flavour", "cu126")
    env = fake_nvidia_smi(tmp_path / "bin", ["6.1"])
    assert PIP + "/opt/alice/requirements.txt" in dry_install(env, "--flavour", "cu130")


def test_the_cu126_files_ship_with_the_checkout() -> None:
    """install.sh copies deploy/ into its prefix; the docs name the build command."""
    assert CU126_LOCK.is_file() and (ROOT / "bentofile-cu126.yaml").is_file()
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "bentoml build -f bentofile-cu126.yaml" in deploy_doc
    assert "containerize alice-cu126:latest -t alice:cu126" in deploy_doc
