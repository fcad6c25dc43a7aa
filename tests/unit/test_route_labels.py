"""BentoML's request metrics and access log see route templates, never the paths clients send.

alice/http/route_labels.py replaces two BentoML internals and reads FastAPI's routes: these
tests fail if a BentoML or FastAPI upgrade moves what it relies on. The end-to-end proof on
`/metrics` is tests/e2e/test_metrics_privacy.py.
"""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY, generate_latest
from starlette.testclient import TestClient

from alice.http.route_labels import UNMATCHED, route_label
from tests.support import forget_service_metrics


@pytest.fixture(scope="module")
def app():
    from service import Alice

    forget_service_metrics()
    yield Alice.to_asgi()
    forget_service_metrics()


def test_bentoml_builds_its_app_with_the_route_labelled_middlewares(app):
    names = [middleware.cls.__name__ for middleware in app.user_middleware]
    assert "RouteLabelledRunnerTrafficMetricsMiddleware" in names
    assert "RouteLabelledAccessLogMiddleware" in names
    assert not {"RunnerTrafficMetricsMiddleware", "AccessLogMiddleware"} & set(names)


@pytest.mark.parametrize(("method", "path", "label"), [
    ("GET", "/images/0123456789abcdef0123456789abcdef.png", "/images/{name}"),
    ("HEAD", "/images/0123456789abcdef0123456789abcdef.png", "/images/{name}"),
    ("GET", "/web/app.js", "/web/{path}"),
    ("GET", "/web/", "/web/"),
    ("GET", "/v1/jobs/job-1234", "/v1/jobs/{job_id}"),
    ("DELETE", "/v1/jobs/job-1234", "/v1/jobs/{job_id}"),
    ("POST", "/v1/models/sd/alice-demo/load", "/v1/models/{model_id}/load"),
    ("GET", "/v1/models/sd/alice-demo", "/v1/models/{model_id}"),
    ("GET", "/v1/models/download/status/task-1", "/v1/models/download/status/{task_id}"),
    ("POST", "/v1/chat/completions", "/v1/chat/completions"),
    ("POST", "/generate", "/generate"),
    ("GET", "/generate", "/generate"),  # a 405, on a route that exists
    ("GET", "/metrics", "/metrics"),
    ("GET", "/health", "/health"),
    ("GET", "/", "/"),
    ("GET", "/secret-name/wp-admin/setup.php", UNMATCHED),
    ("GET", "/imagesX/secret.png", UNMATCHED),
])
def test_labels_are_route_templates_or_one_label_for_no_route(app, method, path, label):
    assert route_label({"type": "http", "method": method, "path": path, "root_path": "", "app": app}) == label


def test_metrics_and_access_log_of_a_request_name_its_route(app, caplog):
    client = TestClient(app)  # no lifespan: paths that reach no ALICE code are enough here
    with caplog.at_level(logging.INFO, logger="bentoml.access"):
        assert client.get("/no-such-secret-path/7f3a9c").status_code == 404
    assert "path=unmatched" in caplog.text and "7f3a9c" not in caplog.text
    text = generate_latest(REGISTRY).decode()
    assert 'bentoml_service_request_total{endpoint="unmatched",http_response_code="404"' in text
    assert "7f3a9c" not in text
