"""The OpenAPI document at `/docs.json` is valid and says what the server does.

Schemathesis (pinned in requirements-dev.txt) runs in process against the real BentoML app on
the fake engine, with an API key and small limits: every check, its examples, coverage,
fuzzing and stateful phases, generation derandomised with a fixed seed so the run never
flakes. To stay cheap it draws MAX_EXAMPLES examples per operation and STATEFUL_STEPS steps
of the stateful phase (22 to 38 s on the shared 2-core machine, the coverage phase two thirds
of it; see docs/api.md "The OpenAPI document").

Every operation is run through it. The model sites (Hugging Face, CivitAI) are the suite's
local stand-in (tests/downloads/fake_sources.py), holding one repo and one model, so the two
search routes answer real results and downloads fail at once (the stand-in has no such file).
BentoML's `/metrics` reads the Prometheus folder that `bentoml serve` sets up
(PROMETHEUS_MULTIPROC_DIR): without one its handler raises, and BentoML's timeout middleware
(bentoml/_internal/server/http/traffic.py) waits for an answer that never comes until the
traffic timeout (660 s), so the app gets an empty folder of its own; the in-process app writes
its metrics to memory, so that page is empty here (tests/e2e reads a real server's).

Every check is on, "schema-valid request accepted" too: what JSON Schema can state about a
request is in the document (cross-field rules as if/then and not, added to the served document
only: alice/http/request_rules.py; patterns, the scheduler names in any case; this server's
maximum of images). Two hooks keep the generated requests within what it cannot state, and
widen nothing that counts as accepted: `_within_what_the_schema_cannot_say` drops requests past
this server's pixels (width x height, after the hires fix or an outpaint: ALICE_MAX_PIXELS, a
product of two fields), a hires fix to a size that upscales by more than hires_scale may (a
ratio of fields), sizes whose sides break width's and height's limits (a `size` text's
pattern cannot restate them), a scheduler of another family than the demo model's (the
pattern takes every family's names; which a model takes depends on `model`, told in the
description), a LoRA named twice or more than MAX_LORAS of them across `loras` and the
prompt's <lora:> tags (one limit over a list and a text; `uniqueItems` cannot say "unique by
name"), a clip_skip past the demo model's text encoder (a limit of the model) and an A1111
text longer than a prompt can be; `_real_images` puts a real PNG where a
positive request's image is (the generator writes any text or bytes: JSON Schema cannot say
"a PNG", nor "a PNG carrying an A1111 text").
"""

from __future__ import annotations

import base64
import io
import re
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from alice.engine.families import FAMILIES
from alice.engine.prompt_tags import extract_prompt_loras
from alice.engine.scheduler_names import canonical_scheduler_name
from alice.engine.spec import MAX_PROMPT_CHARS, hires_cover, hires_resize
from alice.protocol.generation import MAX_LORAS, SCHEDULER_PATTERN
from alice.protocol.openai import SIZE_PATTERN
from harness.environment import alice_environment
from tests.downloads.fake_sources import FakeSources
from tests.downloads.fake_sources import start as start_sources
from tests.fake_engine import FakeEngine
from tests.http.conftest import API_KEY, storing_for
from tests.support import forget_service_metrics

pytestmark = pytest.mark.fake_engine


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # type: ignore[attr-defined]
    return buffer.getvalue()


def _mask() -> bytes:
    from PIL import Image

    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))  # the hole to redraw
    return _png(mask)


def _image() -> bytes:
    from PIL import Image

    return _png(Image.new("RGB", (64, 64), (200, 30, 30)))


def _parameters_png() -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


IMAGE, MASK, PARAMETERS_PNG = _image(), _mask(), _parameters_png()

MAX_PIXELS = 256 * 256
DEMO_SIDE = 64  # the demo model's native size; the stand-in input images' side (IMAGE, MASK)
# The demo model's text encoder (alice/engine/demo.py) has 2 layers: clip_skip 3 reads its first.
DEMO_CLIP_SKIP = 3
MAX_EXAMPLES = 2
STATEFUL_STEPS = 10
SEED = 20261207
KEY = {"Authorization": f"Bearer {API_KEY}"}
SCHEDULER = re.compile(SCHEDULER_PATTERN)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The service's app on the fake engine, keyed, with small limits; the model sites the
    local stand-in. Schemathesis runs its lifespan (the server's start)."""
    from schemathesis.python import asgi

    import service
    from alice.config import load_settings

    tmp = tmp_path_factory.mktemp("openapi")
    sources = FakeSources()
    (tmp / "repo").mkdir()
    sources.hf_repos["alice/tiny-sd"] = tmp / "repo"
    (tmp / "style.safetensors").write_bytes(b"not a LoRA")
    sources.add_civitai_file(1, 11, "a style", "LORA", tmp / "style.safetensors")
    (tmp / "prometheus").mkdir()
    hub = start_sources(sources)
    env = {"ALICE_API_KEYS": API_KEY, "ALICE_MAX_PIXELS": str(MAX_PIXELS), "ALICE_MAX_IMAGES_PER_REQUEST": "2",
           "ALICE_CIVITAI_URL": sources.url, "HF_ENDPOINT": sources.url, "ALICE_QUEUE_SIZE": "1000",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus")}
    engine = FakeEngine()
    forget_service_metrics()
    with storing_for(engine), alice_environment(tmp, env), service.setup.serving_with(load_settings(), engine):
        try:
            yield service.Alice.to_asgi()
        finally:
            asgi.shutdown_lifespans()
            hub.shutdown()


@pytest.fixture(scope="module")
def served(app: object) -> Iterator[object]:
    """A `requests` session on the app in process (Schemathesis' own client)."""
    from schemathesis.python import asgi

    with asgi.get_client(app) as client:
        yield client


def test_the_served_document_is_valid_openapi_3_1(served):
    from openapi_spec_validator import validate

    document = served.get("/docs.json", headers=KEY).json()
    validate(document)  # raises, naming the first problem
    assert document["openapi"].startswith("3.1")
    generate = document["paths"]["/generate"]["post"]
    assert {"/generate", "/v1/chat/completions", "/v1/jobs/{job_id}", "/livez"} <= set(document["paths"])
    assert generate["operationId"] == "generate" and generate["tags"] == ["generation"]
    operation_ids = [operation["operationId"] for item in document["paths"].values() for operation in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


def test_every_route_documents_its_body_and_errors(served):
    document = served.get("/docs.json", headers=KEY).json()
    paths = document["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    assert {"400", "401", "404", "413", "503"} <= set(chat["responses"])
    assert "Retry-After" in chat["responses"]["503"]["headers"]
    jobs = paths["/v1/jobs"]["post"]
    assert jobs["responses"]["202"]["links"]["GetJob"]["operationId"] == "get_job"
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    width = document["components"]["schemas"]["GenerateRequest"]["properties"]["width"]
    assert "65536 pixels" in width["description"]  # this server's ALICE_MAX_PIXELS, told
    assert not any("422" in op["responses"] for item in paths.values() for op in item.values())


def test_cross_field_rules_are_in_the_schema_and_the_server_refuses_what_breaks_them(served):
    """An edit's settings need an input image; the hires fix takes none: stated in JSON Schema
    (if/then, not) from the rules the server checks (generation.NEEDS_INPUT_IMAGE...)."""
    import jsonschema

    document = served.get("/docs.json", headers=KEY).json()
    schema = {**document["components"]["schemas"]["GenerateRequest"], "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    image = base64.b64encode(IMAGE).decode()
    for body, param in [({"prompt": "x", "mask": base64.b64encode(MASK).decode()}, "mask"),
                        ({"prompt": "x", "outpaint": {"left": 8}, "input_image": None}, "outpaint"),
                        ({"prompt": "x", "hires_scale": 1.5, "input_image": image}, "hires_scale"),
                        ({"prompt": "x", "hires_width": 128, "input_image": image}, "hires_width")]:
        assert not validator.is_valid(body), body
        response = served.post("/generate", json={**body, "width": 64, "height": 64}, headers=KEY)
        assert response.status_code == 400 and response.json()["detail"][0]["loc"] == [param], response.text
    assert validator.is_valid({"prompt": "x", "mask": None, "outpaint": None, "hires_scale": 1.5})
    assert validator.is_valid({"prompt": "x", "input_image": image, "outpaint": {"left": 8}})
    # Limits of this server's configuration that are a plain maximum are stated as one.
    images = document["components"]["schemas"]["ImagesRequest"]["properties"]
    assert images["n"]["maximum"] == 2 and "transparent" not in str(images["background"]["anyOf"])


def test_scheduler_names_are_stated_in_any_case_as_the_server_reads_them(served):
    import jsonschema

    document = served.get("/docs.json", headers=KEY).json()
    schema = {**document["components"]["schemas"]["GenerateRequest"], "components": document["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    scheduler = document["components"]["schemas"]["GenerateRequest"]["properties"]["scheduler"]
    assert "sd15, sd2, sdxl: ddim" in scheduler["description"]  # which a family takes, told
    for name, status in ((" DPM++_2M_Karras ", 200), ("dpm+", 400)):
        assert validator.is_valid({"prompt": "x", "scheduler": name}) == (status == 200), name
        answer = served.post("/generate", json={"prompt": "x", "scheduler": name, "steps": 2, "width": 64,
                                                "height": 64}, headers=KEY)
        assert answer.status_code == status, answer.text


def test_bentoml_builds_its_own_document_from_the_request_models():
    """`bentoml build` writes BentoML's own document (the Bento's apis/openapi.yaml and
    schema.json) from `/generate`'s models; its Schema class takes a fixed set of keywords (no
    `if`, `then`, `not`), so the rules across fields live in ALICE's served document only
    (alice/http/request_rules.py). Every protocol model stays within those keywords, so any of
    them can become a BentoML API's input."""
    import importlib
    import json
    import pkgutil

    import yaml
    from bentoml._internal.service.openapi.specification import Schema
    from pydantic import BaseModel

    import alice.protocol
    import service

    yaml.dump(service.Alice.openapi_spec)  # what bentoml build does (bentoml/_internal/bento/bento.py)
    json.dumps(service.Alice.schema())
    keywords = {attribute.name for attribute in Schema.__attrs_attrs__} | {"$ref", "$defs"}
    models = {value for info in pkgutil.iter_modules(alice.protocol.__path__)
              for value in vars(importlib.import_module(f"alice.protocol.{info.name}")).values()
              if isinstance(value, type) and issubclass(value, BaseModel) and value.__module__.startswith("alice.")}
    assert len(models) > 20
    for model in models:
        schema = model.model_json_schema()
        # BentoML builds a Schema of each model and each of its $defs, merging the first of an allOf or anyOf into it.
        for part in (schema, *schema.get("$defs", {}).values()):
            for merged in (part, *part.get("allOf", ()), *part.get("anyOf", ())):
                assert set(merged) <= keywords, (model.__name__, set(merged) - keywords)


def test_metrics_and_the_model_searches_answer_in_process(served):
    """The operations Schemathesis could not reach before: `/metrics` (the app's own Prometheus
    folder) and the searches (the stand-in model sites) answer, not hang or fail upstream."""
    metrics = served.get("/metrics", timeout=5)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    found = served.post("/v1/models/search/huggingface", json={"query": "tiny"}, headers=KEY, timeout=5)
    assert found.status_code == 200 and [item["id"] for item in found.json()["data"]] == ["alice/tiny-sd"]
    found = served.post("/v1/models/search/civitai", json={"query": "style"}, headers=KEY, timeout=5)
    assert found.status_code == 200 and found.json()["data"][0]["name"] == "a style", found.text


def test_an_undeclared_method_gets_405_with_allow(served):
    response = served.request("TRACE", "/v1/models/alice-demo", headers=KEY)
    assert response.status_code == 405 and set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}
    # A model route's catch-all does not answer for another route's path.
    response = served.delete("/v1/models/download/status/abc", headers=KEY)
    assert response.status_code == 405 and response.headers["allow"] == "GET"


def test_redoc_is_served_from_the_package(served):
    page = served.get("/redoc", headers=KEY)
    assert page.status_code == 200 and "/docs.json" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = served.get("/redoc/redoc.standalone.js", headers=KEY)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert b"redoc" in script.content[:2000].lower() and len(script.content) > 100_000


def test_schemathesis_finds_nothing(app):
    import schemathesis
    from schemathesis.config import SchemathesisConfig
    from schemathesis.engine import from_schema

    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "headers": {"Authorization": f"Bearer {API_KEY}"},
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "checks": {"enabled": True},
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
        "continue-on-failure": True,
    })
    schema = schemathesis.openapi.from_asgi("/docs.json", app, config=config, headers=KEY)
    schema.hook("filter_case")(_within_what_the_schema_cannot_say)
    schema.hook("map_case")(_real_images)
    failures = sorted({
        f"{check.name} on {finished.recorder.label}: {check.failure_info.failure.title}: "
        f"{_answer(finished.recorder, case_id)} {_shortened(check.failure_info.code_sample)}"[:1200]
        for finished in _scenarios(from_schema(schema).execute())
        for case_id, checks in finished.recorder.checks.items() for check in checks
        if check.failure_info is not None
    })
    assert failures == [], "\n".join(failures)


def _shortened(code_sample: str) -> str:
    """A failure's curl line with its images (base64) named rather than written out."""
    return re.sub(r"iVBORw0KGgo[A-Za-z0-9+/=]+", "<PNG>", code_sample)


def _answer(recorder: object, case_id: str) -> str:
    interaction = recorder.interactions.get(case_id)  # type: ignore[attr-defined]
    response = getattr(interaction, "response", None)
    return f"[{response.status_code} {response.content[:240]!r}]" if response is not None else ""


def _drawing_settings(case: object) -> dict | None:
    """The drawing settings of a generated body: the body itself, or a chat's `metadata`."""
    body = getattr(case, "body", None)
    if not isinstance(body, dict):
        return None
    settings = body.get("metadata") if "messages" in body else body
    return settings if isinstance(settings, dict) else None


def _within_what_the_schema_cannot_say(context: object, case: object) -> bool:
    """Keeps the generated bodies within this server's limits that JSON Schema cannot state
    (see the module's docstring)."""
    settings = _drawing_settings(case)
    if settings is None:
        return True
    width, height = settings.get("width"), settings.get("height")
    size = settings.get("size")
    if isinstance(size, str) and SIZE_PATTERN.match(size):  # the sides' limits are width's and height's
        width, height = (int(side) for side in SIZE_PATTERN.match(size).groups())
        if not all(64 <= side <= 2048 and side % 8 == 0 for side in (width, height)):
            return False
    if isinstance(settings.get("outpaint"), dict) and width is None and height is None:
        width = height = DEMO_SIDE  # the stand-in input image's side (_real_images), extended
        borders = settings["outpaint"]
        width += sum(v for k, v in borders.items() if k in ("left", "right") and isinstance(v, int))
        height += sum(v for k, v in borders.items() if k in ("top", "bottom") and isinstance(v, int))
    # A side left out is the demo model's native one (its stand-in input image's too).
    width, height = (side if _number(side) else DEMO_SIDE for side in (width, height))
    scale = settings.get("hires_scale")
    scale = scale if _number(scale) else 1
    if width * height * scale * scale > MAX_PIXELS:
        return False
    if not _hires_to_a_size_fits(settings, int(width), int(height)):
        return False
    text = settings.get("parameters")  # from-parameters: its prompt (the text's first lines) within the limit
    if isinstance(text, str) and len(text) > MAX_PROMPT_CHARS:
        return False
    scheduler = settings.get("scheduler")  # the pattern takes every family's names; the demo, SD 1.5's
    if isinstance(scheduler, str) and SCHEDULER.match(scheduler) and \
            canonical_scheduler_name(scheduler) not in FAMILIES["sd15"].schedulers:
        return False
    # The LoRAs of the `loras` entries and the prompt's <lora:> tags together: each once, at most MAX_LORAS.
    loras = [entry["name"] for entry in settings.get("loras") or () if isinstance(entry, dict)
             and isinstance(entry.get("name"), str)]
    if isinstance(settings.get("prompt"), str):
        loras += [name for name, _ in extract_prompt_loras(settings["prompt"])[1]]
    if len(loras) != len(set(loras)) or len(loras) > MAX_LORAS:
        return False
    clip_skip = settings.get("clip_skip")
    return not (_number(clip_skip) and clip_skip > DEMO_CLIP_SKIP)


def _hires_to_a_size_fits(settings: dict, width: int, height: int) -> bool:
    """The hires fix to hires_width x hires_height: the scale that covers it (a ratio of two
    fields) within hires_scale's limits, the size kept within this server's pixels, and a
    hires_scale sent beside it that scale (alice/protocol/generation.py's _hires_scale)."""
    target = [side if _number(side) and side else None for side in (settings.get("hires_width"),
                                                                     settings.get("hires_height"))]
    if not any(target):
        return True
    sides = [int(side) if side else None for side in target]
    scale, drawable = hires_cover(width, height, *sides)
    if not drawable:
        return False
    _, kept = hires_resize(width, height, *sides)
    asked = settings.get("hires_scale")
    return kept[0] * kept[1] <= MAX_PIXELS and not (_number(asked) and round(asked, 4) != scale)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _real_images(context: object, case: object) -> object:
    """An image where the generator wrote some text or bytes (JSON Schema cannot say "a PNG"):
    a 64x64 picture, a mask of its size with a hole, or for from-parameters a PNG carrying
    an A1111 `parameters` text."""
    body = getattr(case, "body", None)
    meta = getattr(case, "meta", None)
    if not isinstance(body, dict) or meta is None or not meta.generation.mode.is_positive:
        return case  # a schema-violating body stays one
    from_parameters = case.operation.path.endswith("-parameters")  # type: ignore[attr-defined]
    images = {"image": PARAMETERS_PNG if from_parameters else IMAGE, "mask": MASK}
    if case.media_type == "multipart/form-data":  # type: ignore[attr-defined]
        body.update({name: value for name, value in images.items() if body.get(name) is not None})
        return case
    settings = _drawing_settings(case) or {}
    pictures = {"input_image": IMAGE, "mask": MASK, **({"image": PARAMETERS_PNG} if from_parameters else {})}
    for where in (body, settings):
        for name, value in pictures.items():
            if isinstance(where.get(name), str):
                where[name] = base64.b64encode(value).decode()
    if isinstance(settings.get("input_images"), list):
        settings["input_images"] = [base64.b64encode(IMAGE).decode() for _ in settings["input_images"]]
    return case


def _scenarios(events: Iterator[object]) -> Iterator[object]:
    for event in events:
        name = type(event).__name__
        if name == "NonFatalError":  # Schemathesis' own error (a hook's, a schema it cannot read): its traceback
            error = getattr(event.info, "_error", event.info)
            raise AssertionError("".join(traceback.format_exception(error)) if isinstance(error, BaseException)
                                 else str(error))
        if name == "ScenarioFinished" and getattr(event, "recorder", None) is not None:
            yield event


class _InProcess:
    """An httpx transport over Schemathesis' in-process client, for a generated client's httpx.Client."""

    def __init__(self, session: object) -> None:
        self.session = session

    def handle_request(self, request):  # httpx.BaseTransport's one method
        import httpx

        answer = self.session.request(request.method, str(request.url), headers=dict(request.headers),
                                      data=request.read())
        return httpx.Response(answer.status_code, headers=dict(answer.headers), content=answer.content)

    def close(self) -> None:
        pass


def test_a_client_generated_from_the_document_draws(served, tmp_path_factory):
    """openapi-python-client (pinned) builds a typed client from `/docs.json`; it calls the native,
    job, Images API and chat routes and reads their answers with its generated models."""
    import importlib
    import json
    import os
    import subprocess
    import sys

    import httpx

    folder = tmp_path_factory.mktemp("client")
    (folder / "openapi.json").write_text(json.dumps(served.get("/docs.json", headers=KEY).json()))
    # Its own virtualenv (`make test` makes it from requirements-codegen.txt: it caps typer below
    # ALICE's pin); ruff, which formats what it writes, lives beside it.
    bin_dir = Path(__file__).resolve().parents[2] / ".venv-codegen" / "bin"
    subprocess.run([str(bin_dir / "openapi-python-client"), "generate", "--path", "openapi.json", "--meta", "none",
                    "--output-path", "alice_client"], cwd=folder, check=True, capture_output=True,
                   env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    sys.path.insert(0, str(folder))
    try:
        client_module = importlib.import_module("alice_client.client")
        generate = importlib.import_module("alice_client.api.generation.generate")
        submit_job = importlib.import_module("alice_client.api.generation.submit_job")
        images_generations = importlib.import_module("alice_client.api.openai.images_generations")
        models = importlib.import_module("alice_client.models")
        client = client_module.AuthenticatedClient(base_url="http://testserver", token=API_KEY)
        client.set_httpx_client(httpx.Client(base_url="http://testserver", transport=_InProcess(served),
                                              headers={"Authorization": f"Bearer {API_KEY}"}))

        drawn = generate.sync(client=client, body=models.GenerateRequest(prompt="a red circle", steps=2, seed=3,
                                                                         width=64, height=64))
        assert isinstance(drawn, models.GenerateResponse)
        assert drawn.images[0].seed == 3 and drawn.images[0].b64_json

        queued = submit_job.sync_detailed(client=client, body=models.GenerateRequest(prompt="a blue square", steps=2))
        assert queued.status_code == 202 and queued.headers["location"].startswith("/v1/jobs/job-")

        refused = generate.sync(client=client, body=models.GenerateRequest(prompt="x", width=1024, height=1024))
        assert isinstance(refused, models.NativeError) and "ALICE_MAX_PIXELS" in refused.error

        answer = images_generations.sync_detailed(
            client=client, body=models.ImagesRequest(prompt="a green star", size="64x64",
                                                     response_format=models.ImagesRequestResponseFormat.B64_JSON))
        assert answer.status_code == 200 and json.loads(answer.content)["data"][0]["b64_json"]

        # SAM's route: its settings as SAM sends them (samConfig), one generated class for all three places.
        chat = importlib.import_module("alice_client.api.openai.chat_completions")
        said = chat.sync_detailed(client=client, body=models.ChatCompletionRequest(
            messages=[models.ChatMessage(role="user", content="a yellow moon")],
            samConfig=models.ChatSettings.from_dict({"steps": 2, "width": 64, "height": 64, "seed": 5})))
        assert said.status_code == 200, said.content
        metadata = json.loads(said.content)["choices"][0]["message"]["metadata"]
        assert (metadata["steps"], metadata["width"], metadata["seed"]) == (2, 64, 5)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.startswith("alice_client")]:
            del sys.modules[name]
