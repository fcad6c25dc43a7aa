"""The README's deployment promises: configuration reference, commands, compose file, links."""

from __future__ import annotations

import re

import yaml

from tests.deploy.conftest import DEPLOY, ROOT, known_env_names

README = (ROOT / "README.md").read_text(encoding="utf-8")
GUIDE = ROOT / "docs" / "deploy.md"


def section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:] if end == -1 else text[start:end]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_the_configuration_table_lists_every_setting() -> None:
    table = section(README, "## Configuration")
    listed = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    missing = known_env_names() - listed
    assert not missing, f"README's configuration table lacks {sorted(missing)}"
    for extra in ("HF_ENDPOINT", "HF_TOKEN", "BENTOML_HOME"):
        assert extra in listed


def test_the_readme_gives_the_containerize_and_docker_run_commands() -> None:
    deploying = section(README, "## Deploying")
    commands = "\n".join(code_blocks(deploying, "sh"))
    assert "bentoml build" in commands
    assert re.search(r'bentoml"? containerize alice:latest', commands)
    run = re.search(r"docker run -d .*?alice:latest", commands, re.DOTALL).group(0)
    assert "--gpus all" in run and "-p 3000:3000" in run and "ALICE_API_KEYS" in run
    assert "-v alice-data:/home/bentoml/data" in run
    assert "-v alice-models:/home/bentoml/bento/models" in run
    assert "deploy/seed-models.sh" in commands  # the model volume is filled before the server starts


def test_the_readme_compose_file_is_deploy_docker_compose_yml() -> None:
    (block,) = code_blocks(section(README, "## Deploying"), "yaml")
    shown = yaml.safe_load(block)
    shipped = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    assert shown == shipped


def test_the_readme_has_sam_setup_and_troubleshooting() -> None:
    deploying = section(README, "## Deploying")
    sam = deploying[deploying.index("### Setting up SAM, step by step"):]
    assert len(re.findall(r"^\d+\. ", sam, re.MULTILINE)) >= 5
    assert "/v1" in sam and "/health" in sam
    trouble = deploying[deploying.index("### Troubleshooting"):].lower()
    for failure in ("gpu_available", "out of memory", "address already in use", "not in the model store"):
        assert failure in trouble, failure
    assert "(#setting-up-sam-step-by-step)" in README  # the SAM section links to the steps


def test_relative_links_in_the_docs_resolve() -> None:
    for document in (ROOT / "README.md", GUIDE):
        text = document.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (document.parent / target).exists(), f"{document.name} links to missing {target}"


def test_the_guide_covers_every_deployment_file() -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file():
            name = path.relative_to(ROOT).as_posix()
            assert name in guide or path.name in guide, f"docs/deploy.md does not mention {name}"
    assert "bentoml#5566" in guide and "R580" in guide
