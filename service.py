"""ALICE as a BentoML service: a thin shell over the `alice` package.

    bentoml serve service:Alice --port 3000
"""

from __future__ import annotations

import bentoml

from alice.http import header_timeout, native, route_labels
from alice.http.app import http_app
from alice.http.auth import ApiKeyMiddleware, warn_if_open_beyond_loopback
from alice.http.openapi import ApiDocs
from alice.http.handling import serve_runtime
from alice.http.request_bodies import BodyLimitMiddleware
from alice.logs import configure_logging
from alice.protocol.native import GenerateRequest, GenerateResponse
from alice.serving.service_setup import ServiceSetup
from alice.serving.start_phases import StartPhases
from alice.http.tls import service_ssl_options

# Before BentoML builds the app: its request metrics and access log name routes, not raw paths.
route_labels.install()
# The settings are read once, here at import (BentoML takes `concurrency` and TLS from the
# decorator); the key check and the runtime get the same ones.
setup = ServiceSetup()
_decorator_settings = setup.settings_or_defaults()
# Before uvicorn builds its protocol: slow or idle connections must not hold the sockets.
header_timeout.install(_decorator_settings.header_timeout_s)


@bentoml.service(
    name="alice",
    resources={"gpu": 1},
    workers=1,  # one process owns the GPU; its worker thread runs one generation at a time
    # SAM waits 600 s; jobs have their own, shorter deadline. A replica draws up to
    # ALICE_MAX_BATCH images at once (waiting requests share a pipeline call): BentoML's
    # autoscalers scale replicas on `concurrency`.
    traffic={"timeout": 660, "concurrency": _decorator_settings.max_batch},
    **service_ssl_options(_decorator_settings),  # HTTPS when ALICE_TLS_CERTFILE / ALICE_TLS_KEYFILE are set
)
@bentoml.asgi_app(http_app, path="/")
class Alice:
    def __init__(self) -> None:
        phases = StartPhases("imports and BentoML setup")  # logged once the default model is loaded
        settings = setup.settings()  # a bad setting ends the start here, named
        configure_logging(settings.log_level)
        keys = settings.keyring()
        warn_if_open_beyond_loopback([key.name for key in keys], tls=settings.tls_certfile is not None,
                                     admins=sum(key.admin for key in keys))
        phases.done("settings")
        self.runtime = setup.runtime()
        serve_runtime(http_app, self.runtime)  # the mounted app's handlers find it on its state
        phases.done("runtime")
        self.runtime.start(phases)

    def __is_ready__(self) -> bool:
        """`/readyz` stays not-ready until the default model is loaded."""
        return self.runtime.ready

    @bentoml.api(route="/generate", input_spec=GenerateRequest)
    async def generate(self, ctx: bentoml.Context, **params) -> GenerateResponse:
        """Text to image: the JSON body holds the settings flat; answers PNGs (base64 and URL)."""
        # Errors come back as a JSONResponse, which BentoML passes through as it is.
        # BentoML has validated the body against input_spec already: build the model without a second pass.
        request = GenerateRequest.model_construct(**params)
        return await native.generate(self.runtime, ctx, request)  # type: ignore[return-value]

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.runtime.shutdown()
        serve_runtime(http_app, None)


Alice.add_asgi_middleware(ApiKeyMiddleware, settings=setup.settings)
Alice.add_asgi_middleware(BodyLimitMiddleware)  # inside the key check: a stranger learns nothing of limits
# `/docs.json` as OpenAPI 3.1 of every route (BentoML's own is 3.0 and partial).
Alice.add_asgi_middleware(ApiDocs, fastapi_app=http_app, settings=setup.settings)
