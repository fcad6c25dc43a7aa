"""The README's deployment promises: configuration reference, commands, compose file, links."""

from __future__ import annotations

import re

import yaml

from tests.deploy.conftest import DEPLOY, ROOT, known_env_names

README = (ROOT / "README.md").read_text(encoding="utf-8")
GUIDE = ROOT / "docs" / "deploy.md"
API = ROOT / "docs" / "api.md"


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
    for document in (ROOT / "README.md", GUIDE, API):
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


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route the service answers: BentoML's own, then the mounted app's.
    Path parameters become `{}`, so `{model_id:path}` and a doc's `{id}` compare equal."""
    from starlette.routing import Mount, Route

    from alice.http.app import http_app
    from service import Alice
    from tests.http.test_every_route_needs_a_key import app_routes

    routes: set[tuple[str, str]] = set()
    for route in Alice.to_asgi().routes:
        if isinstance(route, Route):
            routes |= {(method, route.path) for method in route.methods or {"GET"} if method != "HEAD"}
        elif isinstance(route, Mount) and route.app is not http_app:  # BentoML's static files
            routes.add(("GET", route.path + "/{path}"))
    routes |= set(app_routes(http_app.routes))
    routes |= {(method, route.path) for route in http_app.routes for method in getattr(route, "methods", ())}
    return {(method, re.sub(r"\{[^}]*\}", "{}", path)) for method, path in routes}


def documented_routes() -> set[tuple[str, str]]:
    text = API.read_text(encoding="utf-8")
    return {(method, re.sub(r"\{[^}]*\}", "{}", path))
            for method, path in re.findall(r"`(GET|HEAD|POST|PUT|PATCH|DELETE) (/[^`\s?]*)[^`]*`", text)}


def test_the_api_reference_lists_every_route_the_app_serves() -> None:
    served, documented = served_routes(), documented_routes()
    missing = {route for route in served if route[0] != "HEAD"} - documented
    assert not missing, f"docs/api.md does not list {sorted(missing)}"
    stale = documented - served
    assert not stale, f"docs/api.md lists routes the app does not serve: {sorted(stale)}"


def test_the_readme_links_the_api_reference_and_nothing_outside_the_repository() -> None:
    assert "(docs/api.md)" in README
    for document in (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        assert "../shared" not in document.read_text(encoding="utf-8"), document.name


def test_compiling_is_for_bare_hosts_everywhere_it_is_said() -> None:
    """The image installs no Debian package (tests/deploy/test_image.py), so it has no compiler
    and ALICE_COMPILE_UNET runs eager there: the README, the guide, the bentofiles, the
    Dockerfile template and the engine's own refusal all say so, and the guide's recipe for a
    container that compiles installs what Triton needs and leaves no apt lists behind."""
    from alice.engine.device import DeviceFacts
    from alice.engine.pipelines import compile_refusal

    row = next(line for line in README.splitlines() if line.startswith("| `ALICE_COMPILE_UNET`"))
    assert "**bare hosts only**" in row and "the container image has no compiler" in row
    guide = section(GUIDE.read_text(encoding="utf-8"), "## Compiling the UNet")
    assert "**It is for bare hosts**" in guide and "217 MB" in guide
    (recipe,) = code_blocks(guide, "dockerfile")
    assert "apt-get install -y --no-install-recommends gcc libc6-dev" in recipe
    assert "rm -rf /var/lib/apt/lists/*" in recipe and recipe.rstrip().endswith("USER bentoml")
    for name in ("bentofile.yaml", "bentofile-cu126.yaml", "deploy/Dockerfile.template"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert "ALICE_COMPILE_UNET runs eager" in text and "Compiling the UNet" in text, name
        assert not re.search(r"\b(apt-get|gcc|build-essential)\b.*install|install.*\bgcc\b", text), name
    for gpu in (False, True):
        facts = DeviceFacts(device="cuda:0", capability=(8, 9)) if gpu else DeviceFacts()
        assert "compiling is for bare hosts" in compile_refusal(facts, compiler_found=False)
