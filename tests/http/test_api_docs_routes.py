"""Routes for people coming from the original ALICE (/docs, /openapi.json, /v1/models/refresh),
and an OpenAPI document FastAPI builds without warnings."""

from __future__ import annotations

import pytest

import warnings

from fastapi.openapi.utils import get_openapi

from alice.http.app import http_app
from tests.http.conftest import API_KEY

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

KEY = {"Authorization": f"Bearer {API_KEY}"}


def test_docs_redirects_to_bentomls_swagger_ui(keyed_client):
    response = keyed_client.get("/docs", headers=KEY, follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/"
    page = keyed_client.get("/docs", headers=KEY)
    assert page.status_code == 200 and "swagger-ui" in page.text


def test_openapi_json_redirects_to_docs_json(keyed_client):
    response = keyed_client.get("/openapi.json", headers=KEY, follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/docs.json"
    document = keyed_client.get("/openapi.json", headers=KEY).json()
    assert {"/generate", "/v1/chat/completions", "/images/{name}"} <= set(document["paths"])


def test_refresh_answers_the_number_of_models_found(keyed_client):
    response = keyed_client.post("/v1/models/refresh", headers=KEY)
    listed = keyed_client.get("/v1/models", headers=KEY).json()["data"]
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "models_found": len(listed)} and listed


def test_an_image_answers_get_and_head_without_a_key(keyed_client):
    made = keyed_client.post("/generate", headers=KEY, json={"prompt": "a red circle", "steps": 1, "seed": 1})
    path = "/images/" + made.json()["images"][0]["name"]
    got, head = keyed_client.get(path), keyed_client.head(path)
    assert got.status_code == head.status_code == 200
    assert got.headers["content-type"] == head.headers["content-type"] == "image/png"
    assert head.headers["content-length"] == str(len(got.content)) and head.content == b""


def test_the_openapi_document_builds_without_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # What BentoML does for /docs.json (_bentoml_sdk/service/openapi.py), then FastAPI's own.
        document = get_openapi(title="ALICE", version="1", routes=http_app.routes)
        http_app.openapi_schema = None
        http_app.openapi()
    assert [str(warning.message) for warning in caught] == []
    image = document["paths"]["/images/{name}"]
    assert image["get"]["operationId"] != image["head"]["operationId"]
