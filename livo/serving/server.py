"""`livo serve`: a KServe custom predictor (a `kserve.Model` served by `kserve.ModelServer`), so the same process runs
locally and as the container of a KServe InferenceService.

Routes (docs/serving.md, "Server"): KServe's v1 `/v1/models/<name>:predict` and Open Inference Protocol v2
`/v2/models/<name>/infer` (plus `/v2/models/<name>/versions/<version>/infer`, 404 for a version not served here),
its health routes (`/v2/health/live`, `/v2/health/ready`, `/v1/models/<name>`), `/metrics` (prometheus_client's
registry), and ours: the page at `/` (for a browser; other clients get KServe's liveness answer there) and `/report`.

Every request is validated (livo.serving.schema: 400 with a one-line `{"error": ...}`), then waits in the bounded
micro-batching queue (livo.serving.batching: 503 + Retry-After when full) for the one worker that calls the
`Generator`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def import_kserve() -> Any:
    """`kserve.model_server` parses `sys.argv` when first imported (and exits on arguments it cannot parse, such as
    `livo serve --config x.yaml`): import it with an empty argument list."""
    if "kserve.model_server" not in sys.modules:
        saved = sys.argv
        sys.argv = saved[:1]
        try:
            import kserve.model_server  # noqa: F401
        finally:
            sys.argv = saved
    import kserve

    return kserve


kserve = import_kserve()

from fastapi import Request, Response  # noqa: E402  (after kserve's guarded import)
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.protocol.rest.v2_datamodels import InferenceRequest  # noqa: E402
from prometheus_client import Counter, Gauge, Histogram  # noqa: E402

from livo.errors import LivoError  # noqa: E402
from livo.log import get_logger, log_event  # noqa: E402
from livo.serving.batching import MicroBatcher  # noqa: E402
from livo.serving.config import ServeConfig  # noqa: E402
from livo.serving.errors import Overloaded, ServingError, VersionNotFound, http_status_for, one_line  # noqa: E402
from livo.serving.generator import GenerationRequest, GenerationResult, Generator, ModelInfo  # noqa: E402
from livo.serving.schema import model_block, parse_v1, parse_v2, png_base64, v1_response  # noqa: E402

logger = get_logger("livo.serving")
PAGE = Path(__file__).with_name("page.html")

# --- metrics (prometheus_client's default registry: what KServe's /metrics exports) ----------------------------------

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
REQUESTS = Counter("livo_serve_requests", "inference requests answered, by route (v1 | v2) and HTTP status",
                   ["route", "code"])
LATENCY = Histogram("livo_serve_request_seconds", "inference request latency (queue wait included), by route",
                    ["route"], buckets=LATENCY_BUCKETS)
IMAGES = Counter("livo_serve_images", "images returned, by principle (id | none) and kind (aligned | base)",
                 ["principle", "kind"])
PRINCIPLES = Counter("livo_serve_principle_chosen", "prompts served, by the principle used (id | none) and how it "
                     "was chosen (auto | requested)", ["principle", "mode"])
BATCHES = Counter("livo_serve_batches", "generator calls (micro-batches)")
BATCH_REQUESTS = Histogram("livo_serve_batch_requests", "requests per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64))
REJECTED = Counter("livo_serve_rejected", "requests refused with 503 because the queue was full")
QUEUE_DEPTH = Gauge("livo_serve_queue_depth", "requests waiting for the worker")

_ROUTES = ((re.compile(r"^/v1/models/[^/]+:predict$"), "v1"),
           (re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "v2"))


def route_of(path: str) -> str | None:
    return next((name for pattern, name in _ROUTES if pattern.match(path)), None)


class RequestMetrics:
    """ASGI middleware: counts every inference request by status (including 400s refused before our code runs) and
    times it."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        route = route_of(scope.get("path", "")) if scope["type"] == "http" and scope.get("method") == "POST" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            LATENCY.labels(route).observe(time.perf_counter() - started)
            REQUESTS.labels(route, str(status["code"])).inc()
            if status["code"] == 503:
                REJECTED.inc()


# --- the predictor ---------------------------------------------------------------------------------------------------


class LivoPredictor(kserve.Model):
    """KServe custom predictor over a `Generator`: v1 bodies arrive as dicts, v2 as `InferRequest`s."""

    def __init__(self, generator: Generator, config: ServeConfig):
        self.generator = generator
        self.config = config
        self.info: ModelInfo = generator.info()
        super().__init__(config.model_name or self.info.name)
        self.batcher = MicroBatcher(self._run_batch, queue_size=config.queue_size, batch_size=config.batch_size,
                                    window_s=config.batch_window_ms / 1000.0, on_batch=self._on_batch)
        QUEUE_DEPTH.set_function(self.batcher.depth)
        self.ready = True  # the generator is loaded before the predictor exists

    def load(self) -> bool:
        self.ready = True
        return self.ready

    # worker thread -------------------------------------------------------------------------------------------------

    def _run_batch(self, jobs: list[list[GenerationRequest]]) -> list[list[GenerationResult]]:
        """One generator call for every prompt of every request in the batch; images are encoded here, off the
        event loop."""
        flat = [request for job in jobs for request in job]
        results = self.generator.generate(flat)
        if len(results) != len(flat):
            raise RuntimeError(f"the generator returned {len(results)} results for {len(flat)} prompts")
        for result in results:
            result.images = [png_base64(image) for image in result.images]
            if result.base_images is not None:
                result.base_images = [png_base64(image) for image in result.base_images]
        out, start = [], 0
        for job in jobs:
            out.append(results[start:start + len(job)])
            start += len(job)
        return out

    @staticmethod
    def _on_batch(size: int, seconds: float) -> None:
        BATCHES.inc()
        BATCH_REQUESTS.observe(size)

    # event loop ----------------------------------------------------------------------------------------------------

    async def _generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        try:
            results = await self.batcher.submit(requests)
        except LivoError:
            raise
        except Exception as exc:  # the generator failed: a one-line 500, not KServe's traceback answer
            raise ServingError(f"generation failed: {type(exc).__name__}: {one_line(exc)}") from exc
        for request, result in zip(requests, results, strict=True):
            label = result.principle.id if result.principle else "none"
            PRINCIPLES.labels(label, "auto" if request.principle == "auto" else "requested").inc()
            IMAGES.labels(label, "aligned").inc(len(result.images))
            if request.compare:
                IMAGES.labels(label, "base").inc(len(result.base_images or []))
        return results

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        if isinstance(payload, InferRequest):
            requests = parse_v2(payload.inputs, payload.parameters, self.info, self.config)
            results = await self._generate(requests)
            return self._v2_response(payload, requests, results)
        requests = parse_v1(payload, self.info, self.config)
        results = await self._generate(requests)
        return v1_response(requests, results, self.info)

    def _v2_response(self, payload: InferRequest, requests: Sequence[GenerationRequest],
                     results: Sequence[GenerationResult]) -> InferResponse:
        images = [image for result in results for image in result.images]
        seeds = [seed for request in requests for seed in request.seeds]
        index = [i for i, request in enumerate(requests) for _ in request.seeds]
        outputs = [
            InferOutput("image", [len(images)], "BYTES", images, parameters={"content_type": "image/png;base64"}),
            InferOutput("seed", [len(seeds)], "INT64", seeds),
            InferOutput("prompt_index", [len(index)], "INT32", index),
            InferOutput("value_token", [len(index)], "BOOL",
                        [used for result in results for used in result.value_token]),
            InferOutput("principle", [len(results)], "BYTES",
                        [result.principle.id if result.principle else "" for result in results]),
            InferOutput("evidence", [len(results)], "BYTES", [json.dumps(result.evidence) for result in results]),
        ]
        if any(request.compare for request in requests):
            base = [image for result in results for image in result.base_images or []]
            outputs.append(InferOutput("base_image", [len(base)], "BYTES", base,
                                       parameters={"content_type": "image/png;base64"}))
        parameters = {k: v for k, v in model_block(self.info).items() if v is not None and k != "version"}
        return InferResponse(response_id=payload.id or "", model_name=self.name, model_version=self.info.version,
                             infer_outputs=outputs, parameters=parameters)


# --- app: error handlers, page, versioned v2 route -------------------------------------------------------------------


def error_response(exc: BaseException) -> JSONResponse:
    status = http_status_for(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
    if status >= 500 and not isinstance(exc, Overloaded):
        log_event(logger, "request failed", error=one_line(exc), type=type(exc).__name__)
    return JSONResponse({"error": one_line(exc)}, status_code=status, headers=headers)


async def _livo_error(_: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    problems = []
    for err in getattr(exc, "errors", lambda: [])():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return JSONResponse({"error": "malformed request: " + ("; ".join(problems) or one_line(exc))}, status_code=400)


def render_page(predictor: LivoPredictor) -> str:
    info = {**predictor.info.to_json(), "route": f"/v1/models/{predictor.name}:predict",
            "report_href": report_href(predictor.info.report_uri),
            "max_images": predictor.config.max_images_per_request}
    blob = json.dumps(info).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return PAGE.read_text(encoding="utf-8").replace("__LIVO_INFO__", blob)


def report_href(uri: str | None) -> str | None:
    if not uri:
        return None
    return uri if uri.startswith(("http://", "https://")) else "/report"


def read_report(uri: str) -> bytes:
    """The report's bytes from the object store (s3://) or a local path."""
    if uri.startswith("s3://"):
        from livo.store import ObjectStore, parse_s3_uri

        return ObjectStore.for_uri(uri).get_bytes(parse_s3_uri(uri)[1])
    return Path(uri.removeprefix("file://")).read_bytes()


def install_routes(app: Any, predictor: LivoPredictor, model_server: Any) -> None:
    """Our routes and handlers on KServe's FastAPI app, before KServe adds its own (the first matching route wins)."""
    from kserve.protocol.rest.v2_endpoints import V2Endpoints

    app.add_middleware(RequestMetrics)
    app.add_exception_handler(LivoError, _livo_error)
    app.add_exception_handler(RequestValidationError, _validation_error)

    async def page(request: Request) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(render_page(predictor))
        return JSONResponse({"status": "alive"})  # what KServe answers at / (liveness)

    async def report() -> Response:
        uri = predictor.info.report_uri
        if not uri:
            return JSONResponse({"error": "this model version has no evaluation report"}, status_code=404)
        try:
            body = await asyncio.get_running_loop().run_in_executor(None, read_report, uri)
        except (OSError, LivoError) as exc:
            return JSONResponse({"error": f"cannot read the report {uri}: {one_line(exc)}"}, status_code=502)
        return HTMLResponse(body)

    v2 = V2Endpoints(model_server.dataplane, model_server.model_repository_extension)

    async def versioned_infer(raw_request: Request, raw_response: Response, model_name: str, model_version: str,
                              request_body: InferenceRequest) -> Any:
        if model_version not in (predictor.info.version, f"{predictor.info.name}@{predictor.info.version}"):
            raise VersionNotFound(f"model version {model_version!r} is not served here; this server serves "
                                  f"{predictor.info.name}@{predictor.info.version}")
        return await v2.infer(raw_request, raw_response, model_name, request_body)

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/report", report, methods=["GET"], include_in_schema=False)
    app.add_api_route("/v2/models/{model_name}/versions/{model_version}/infer", versioned_infer, methods=["POST"],
                      response_model=None)


class LivoModelServer(kserve.ModelServer):
    """`kserve.ModelServer` binding `host` (KServe's REST server always binds 0.0.0.0) with one REST worker and no
    gRPC; uvicorn handles SIGINT/SIGTERM (graceful shutdown, then the signal's usual exit)."""

    def __init__(self, host: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.host = host

    def register_signal_handler(self) -> None:  # uvicorn's own handlers stop the server
        pass

    def start(self, models: list[Any]) -> None:
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.protocol.rest.server import RESTServer

        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive)
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        asyncio.run(self._serve())


def serve(generator: Generator, config: ServeConfig) -> None:
    """Serve `generator` until SIGINT (returns) or SIGTERM (graceful shutdown, then the signal's default: exit 143)."""
    import logging
    import warnings

    from kserve.model_server import app

    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    predictor = LivoPredictor(generator, config)
    model_server = LivoModelServer(config.host, http_port=config.port, enable_grpc=False, workers=1,
                                   enable_latency_logging=False, grace_period=5)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # after KServe's logging setup: a line per request
    install_routes(app, predictor, model_server)
    info = predictor.info
    log_event(logger, "serving", model=f"{info.name}@{info.version}", route=f"/v1/models/{predictor.name}:predict",
              url=f"http://{config.host}:{config.port}/", lineage_sha256=info.lineage_sha256)
    try:
        model_server.start([predictor])
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down gracefully and re-raised it; stopping is success
        log_event(logger, "stopped", model=f"{info.name}@{info.version}")
    finally:
        predictor.batcher.close()
