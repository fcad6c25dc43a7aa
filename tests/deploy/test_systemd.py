"""The systemd units and settings file for a bare Linux host."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, assert_real_settings

SYSTEMD = DEPLOY / "systemd"
UNITS = ["alice.service", "alice@.service"]
VENV_BENTOML = "/opt/alice/.venv/bin/bentoml"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        assert section, f"{path.name}: '{line}' outside a section"
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


def environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in unit["Service"]["Environment"])
    return dict(pairs)


@pytest.mark.parametrize("name", UNITS)
def test_the_unit_runs_alice_as_a_system_user_with_restarts_and_the_journal(name: str) -> None:
    unit = parse_unit(SYSTEMD / name)
    service = unit["Service"]
    assert service["User"] == ["alice"] and service["Group"] == ["alice"]
    assert service["ExecStart"] == [f"{VENV_BENTOML} serve service:Alice"]
    assert service["WorkingDirectory"] == ["/opt/alice"]
    assert service["Restart"] == ["on-failure"]
    assert service["StandardOutput"] == ["journal"] and service["StandardError"] == ["journal"]
    assert int(service["TimeoutStopSec"][0]) > 60  # the running job may take 60 s to finish
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    state_dirs = service["StateDirectory"][0].split()
    assert "alice" in state_dirs
    env = environment(unit)
    for variable in ("ALICE_DATA_DIR", "BENTOML_HOME", "HOME"):
        assert env[variable].startswith("/var/lib/alice"), variable
        assert env[variable].removeprefix("/var/lib/").replace("%i", "0") in {
            d.replace("%i", "0") for d in state_dirs
        } | {"alice"}, f"{variable} is not a state directory systemd creates for the user"
    assert_real_settings(set(env), name)
    assert service["EnvironmentFile"][0] == "-/etc/alice/alice.env"


def test_one_instance_per_gpu_with_the_shared_image_store() -> None:
    unit = parse_unit(SYSTEMD / "alice@.service")
    env = environment(unit)
    assert env["CUDA_VISIBLE_DEVICES"] == "%i"
    assert env["ALICE_DATA_DIR"] == "/var/lib/alice/gpu%i"
    # A BentoML home of its own (BentoML empties $BENTOML_HOME/prometheus_multiproc_dir at every
    # start), with the one model store alice.service uses bound into it.
    assert env["BENTOML_HOME"] == "/var/lib/alice/gpu%i/bentoml"
    shared_store = environment(parse_unit(SYSTEMD / "alice.service"))["BENTOML_HOME"] + "/models"
    assert env["BENTOML_PORT"] == "310%i"
    assert unit["Service"]["BindPaths"] == [
        "/var/lib/alice/images:/var/lib/alice/gpu%i/images /var/lib/alice/inputs:/var/lib/alice/gpu%i/inputs "
        f"{shared_store}:/var/lib/alice/gpu%i/bentoml/models"]
    assert {"alice/images", "alice/inputs"} <= set(unit["Service"]["StateDirectory"][0].split())
    assert env["ALICE_REPLICA_NAME"] == "gpu%i"  # its name in a shared queue's records
    assert "-/etc/alice/alice@%i.env" in unit["Service"]["EnvironmentFile"]


def test_the_settings_file_names_only_real_settings() -> None:
    names = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", (SYSTEMD / "alice.env").read_text(), re.MULTILINE))
    assert "ALICE_API_KEYS" in names
    assert_real_settings(names, "alice.env")


@pytest.mark.parametrize("name", UNITS)
def test_systemd_accepts_the_unit(name: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit is checked by parsing only")
    # verify insists that ExecStart's program exists: point it at a stand-in.
    program = tmp_path / "bentoml"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = tmp_path / name
    unit.write_text((SYSTEMD / name).read_text(encoding="utf-8").replace(VENV_BENTOML, str(program)))
    target = tmp_path / name.replace("@.", "@0.")  # a template is verified through an instance
    done = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True, timeout=60)
    # verify exits 0 even for unknown keys or bad values: anything it prints is a finding.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
