"""The OpenAPI document at `/docs.json` is valid and says what the server does.

Schemathesis (pinned in requirements-dev.txt) runs in process against the real BentoML app on
the fake engine, with an API key and small limits: every check, its examples, coverage,
fuzzing and stateful phases, generation derandomised with a fixed seed so the run never
flakes. To stay cheap it draws MAX_EXAMPLES examples per operation and STATEFUL_STEPS steps
of the stateful phase (23 to 29 s here, see docs/api.md "The OpenAPI document").

Not run through it: the two search routes (they call Hugging Face and CivitAI, which this
machine cannot reach; a 502 there says nothing of ALICE) and BentoML's `/metrics` (it needs
the Prometheus folder of a `bentoml serve` process). On the drawing routes the check that
schema-valid requests are accepted is off: their settings have rules across fields that
JSON Schema does not state (an outpaint needs an input image; the pixels of width x height,
ALICE_MAX_PIXELS) and those requests are refused with a 400 naming the rule.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.environment import alice_environment
from tests.fake_engine import FakeEngine
from tests.http.conftest import API_KEY, storing_for
from tests.support import forget_service_metrics

pytestmark = pytest.mark.fake_engine

MAX_EXAMPLES = 2
STATEFUL_STEPS = 10
SEED = 20261207
KEY = {"Authorization": f"Bearer {API_KEY}"}
# The drawing routes: schema-valid requests may break a cross-field rule (see the docstring).
DRAWING = r"^/(generate|v1/jobs|v1/chat/completions|chat/completions|v1/images/.*)$"
UNREACHABLE = r"^/v1/models/search/|^/metrics$"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The service's app on the fake engine, keyed, with small limits; the model sites at a
    closed port, so downloads fail at once. Schemathesis runs its lifespan (the server's start)."""
    from schemathesis.python import asgi

    import service
    from alice.config import load_settings

    env = {"ALICE_API_KEYS": API_KEY, "ALICE_MAX_PIXELS": str(256 * 256), "ALICE_MAX_IMAGES_PER_REQUEST": "2",
           "ALICE_CIVITAI_URL": "http://127.0.0.1:9", "HF_ENDPOINT": "http://127.0.0.1:9",
           "ALICE_QUEUE_SIZE": "1000"}
    engine = FakeEngine()
    forget_service_metrics()
    with storing_for(engine), alice_environment(tmp_path_factory.mktemp("openapi"), env), \
            service.setup.serving_with(load_settings(), engine):
        try:
            yield service.Alice.to_asgi()
        finally:
            asgi.shutdown_lifespans()


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
        "operations": [{"include-path-regex": DRAWING, "checks": {"positive_data_acceptance": {"enabled": False}}}],
    })
    schema = schemathesis.openapi.from_asgi("/docs.json", app, config=config, headers=KEY)
    failures = sorted({
        f"{check.name} on {finished.recorder.label}: {check.failure_info.failure.title}: "
        f"{check.failure_info.code_sample}"[:600]
        for finished in _scenarios(from_schema(schema.exclude(path_regex=UNREACHABLE)).execute())
        for checks in finished.recorder.checks.values() for check in checks
        if check.failure_info is not None
    })
    assert failures == [], "\n".join(failures)


def _scenarios(events: Iterator[object]) -> Iterator[object]:
    for event in events:
        name = type(event).__name__
        assert name != "NonFatalError", getattr(event, "info", event)
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
    job and Images API routes and reads their answers with its generated models."""
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
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name.startswith("alice_client")]:
            del sys.modules[name]
