"""The HTTP app: Vertex AI custom-container routes over the dynamic batcher.

The model loads in the background after startup (explicit `ModelService.load`), so the health
route can answer 503 while it loads, as Vertex AI and Kubernetes probes expect.

The predict route reads decode → predict → encode (the protocol's ``encode_predictions``, which
the client's decoders read back); every refusal is an exception mapped to its status once, by
the handlers ``create_app`` registers (as KServe's server registers its ``InvalidInput`` → 400
and friends): ``RequestError`` → its own status (a body error or a full body budget also closes the
connection; the budget's 429 says when to retry),
``ModelNotReadyError`` and ``ShuttingDownError`` → 503, any other ``RuntimeError`` of a
prediction → 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from batchinfer_protocol.predict_request import RequestError, decode_request
from batchinfer_protocol.zero_shot import encode_predictions, encode_refusal
from model_server.backends import Backend, build_backend
from model_server.batching import (
    BatchObserver,
    DynamicBatcher,
    QueueFullError,
    ShuttingDownError,
)
from model_server.body_budget import BodyBudget, BodyBudgetFullError, BodyHold
from model_server.connection_guard import ensure_file_limit, guarded_protocol
from model_server.instances import instances_of
from model_server.memory_allocator import keep_freed_memory
from model_server.metrics import ServerMetrics
from model_server.model_digest import model_digest
from model_server.model_source import local_model_directory
from model_server.settings import ServerSettings
from model_server.shapes import WarmUpStoppedError

logger = logging.getLogger(__name__)


class ModelNotReadyError(RuntimeError):
    """A predict request before the model is loaded and warm (503: retry after /health is 200)."""


class BodyError(RequestError):
    """The body could not be read whole (too large, too slow, cut off).

    The rest of it may still be on its way, so the answer closes the connection.
    """


class ModelService:
    """The backend, its load state and the batcher that feeds it."""

    def __init__(self, settings: ServerSettings, backend: Backend, metrics: ServerMetrics) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.load_error: str | None = None
        self.batcher = DynamicBatcher(
            backend,
            max_batch_rows=settings.model_batch_pool_rows,
            max_wait_seconds=settings.model_batch_wait_ms / 1000,
            fair_quantum_rows=settings.model_max_batch_size,
            max_queued_instances=settings.model_max_queued_instances,
            observer=BatchObserver(
                on_batch=metrics.observe_batch,
                on_prepare=metrics.prepare_seconds.observe,
                on_queue_depth=metrics.queue_depth.set,
            ),
        )
        self.body_budget = BodyBudget(
            settings.model_body_budget_bytes, on_change=metrics.body_budget_held_bytes.set
        )
        backend.shapes.on_unwarmed = lambda shape: metrics.unwarmed_shapes.inc()
        backend.shapes.on_forward = metrics.observe_forward
        backend.stages.on_stage = metrics.observe_stage
        backend.stages.on_device_busy = metrics.device_busy_seconds.inc

    def load(self) -> None:
        """Load the model; blocking. A failure is kept for /health to report, and re-raised."""
        started = time.perf_counter()
        try:
            self.backend.model_digest = model_digest(
                local_model_directory(self.backend.model_path), self.settings.model_cache_dir
            )
            digest_seconds = time.perf_counter() - started
            self.backend.load()
        except WarmUpStoppedError:
            # Told to stop while warming up (Ctrl-C during start-up): a shutdown, not a failure.
            self.load_error = "stopped during the warm-up"
            logger.info("stopped during the warm-up: the server is shutting down")
            raise
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            logger.exception("loading the %s model failed", self.backend.backend_name)
            raise
        shapes = self.backend.shapes
        self.metrics.warmup_shapes.set(shapes.warmup_shapes)
        self.metrics.warmup_seconds.set(shapes.warmup_seconds)
        self.metrics.cuda_graphs.set(shapes.graphs)
        logger.info(
            "loaded %s model %s (%s, digest in %.2f s) on %s in %.1f s "
            "(warm-up: %d shapes in %.1f s, %d CUDA graphs)",
            self.backend.backend_name,
            self.backend.model_name,
            self.backend.model_digest,
            digest_seconds,
            self.backend.device,
            time.perf_counter() - started,
            shapes.warmup_shapes,
            shapes.warmup_seconds,
            shapes.graphs,
        )

    def loading_state(self) -> str:
        """What /health says while not ready: "loading" weights, or "warming_up" shapes."""
        return "warming_up" if self.backend.warming_up else "loading"

    async def load_in_background(self) -> None:
        """Load in the model's worker thread, which no prediction can use before it is done."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):  # kept in load_error, reported by /health
            await loop.run_in_executor(self.batcher.executor, self.load)


async def read_body(request: Request, max_bytes: int, hold: BodyHold) -> bytes:
    """The request body, refused with 413 as soon as it is known to be too large, and with 429
    when the server's body budget cannot hold it (`hold` grows to cover it).

    Content-Length is checked first, and the bytes actually read too, since a chunked body has
    no Content-Length and a client may send more than it announced.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise BodyError(400, f"invalid Content-Length {declared!r:.40}")
        # Bounded before int(): Python refuses to convert over 4,300 digits (ValueError).
        if len(declared) > len(str(max_bytes)) or int(declared) > max_bytes:
            raise BodyError(
                413,
                f"body of {declared:.40} bytes; the limit is {max_bytes} (MODEL_MAX_BODY_BYTES)",
            )
        hold.cover(int(declared))
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyError(
                413, f"body over {max_bytes} bytes (MODEL_MAX_BODY_BYTES): split the request"
            )
        hold.cover(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_body_within(request: Request, settings: ServerSettings, hold: BodyHold) -> bytes:
    """The body, received within MODEL_BODY_TIMEOUT_SECONDS of the end of the headers.

    The deadline is for the whole body, not between reads: a client trickling a byte at a time
    would otherwise hold its connection and its task for as long as it likes. 408 past it; 400
    when the client closes the connection first.
    """
    try:
        async with asyncio.timeout(settings.model_body_timeout_seconds):
            return await read_body(request, settings.model_max_body_bytes, hold)
    except TimeoutError:
        raise BodyError(
            408,
            f"the body did not arrive within {settings.model_body_timeout_seconds} s "
            "(MODEL_BODY_TIMEOUT_SECONDS)",
        ) from None
    except ClientDisconnect:
        raise BodyError(400, "the client closed the connection before the body ended") from None


def counted(metrics: ServerMetrics, request: Request, response: Response) -> Response:
    """Count a predict answer by status and time it from the route's start (when it started:
    an error of another route is answered, not counted as a prediction's)."""
    started = getattr(request.state, "started", None)
    if started is not None:
        metrics.requests.labels("predict", str(response.status_code)).inc()
        metrics.request_seconds.observe(time.perf_counter() - started)
    return response


def register_error_handlers(app: FastAPI, metrics: ServerMetrics) -> None:
    """Map the predict route's exceptions to statuses, once, for the whole app."""

    async def refused(request: Request, error: RequestError) -> Response:
        headers: dict[str, str] = {}
        if isinstance(error, BodyError | BodyBudgetFullError):
            # The rest of the body may still be on its way: the connection is not reused.
            headers["connection"] = "close"
        if isinstance(error, BodyBudgetFullError | QueueFullError):
            headers["retry-after"] = str(error.retry_after_seconds)
        response = JSONResponse(error.body(), status_code=error.status_code, headers=headers)
        return counted(metrics, request, response)

    async def unavailable(request: Request, error: RuntimeError) -> Response:
        return counted(metrics, request, JSONResponse(encode_refusal(str(error)), status_code=503))

    async def failed(request: Request, error: RuntimeError) -> Response:
        return counted(metrics, request, JSONResponse(encode_refusal(str(error)), status_code=500))

    app.add_exception_handler(RequestError, refused)
    app.add_exception_handler(ModelNotReadyError, unavailable)
    app.add_exception_handler(ShuttingDownError, unavailable)
    app.add_exception_handler(RuntimeError, failed)


def create_app(
    settings: ServerSettings, backend: Backend | None = None, *, load_on_startup: bool = True
) -> FastAPI:
    """The HTTP app; `backend` defaults to the one the settings name.

    With load_on_startup=False the caller loads the model itself (`app.state.service.load()`),
    which tests use to see the server before and after the model is ready.
    """
    metrics = ServerMetrics()
    service = ModelService(settings, backend or build_backend(settings), metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        loading = asyncio.create_task(service.load_in_background()) if load_on_startup else None
        yield
        service.backend.stopping.set()
        if loading is not None:
            await loading
        await service.batcher.stop()

    app = FastAPI(title="batchinfer model server", lifespan=lifespan)
    app.state.service = service

    async def predict(request: Request) -> Response:
        request.state.started = time.perf_counter()
        return counted(metrics, request, await answer_predict(request, service))

    async def health() -> Response:
        description = service.backend.describe()
        if service.backend.loaded:
            response = JSONResponse({"status": "ready", **description})
        else:
            state = "failed" if service.load_error else service.loading_state()
            response = JSONResponse(
                {"status": state, "error": service.load_error, **description}, status_code=503
            )
        metrics.requests.labels("health", str(response.status_code)).inc()
        return response

    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    register_error_handlers(app, metrics)
    app.add_api_route(settings.aip_predict_route, predict, methods=["POST"])
    app.add_api_route(settings.aip_health_route, health, methods=["GET"])
    app.add_api_route("/metrics", prometheus_metrics, methods=["GET"])
    return app


async def answer_predict(request: Request, service: ModelService) -> Response:
    """Decode and check the whole request, predict its instances, encode the answer.

    Raises what the registered handlers map to statuses (``create_app``).
    """
    if not service.backend.loaded:
        state = (
            f"failed to load: {service.load_error}"
            if service.load_error
            else service.loading_state()
        )
        raise ModelNotReadyError(f"the model is not ready ({state}); retry after /health is 200")
    with service.body_budget.hold() as hold:
        body = await read_body_within(request, service.settings, hold)
        settings = service.settings
        instances = instances_of(
            decode_request(body, settings.request_limits), settings.model_max_label_chars
        )
        del body  # the budget is given back here: what is held from now on is the instances
    predictions = await service.batcher.predict(instances)
    service.metrics.instances.inc(len(instances))
    backend = service.backend
    return JSONResponse(encode_predictions(predictions, backend.model_name, backend.model_digest))


def serve(settings: ServerSettings) -> None:
    """Run the server until it is stopped (SIGINT/SIGTERM); one process per accelerator."""
    logging.basicConfig(
        level=settings.model_log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.model_keep_freed_memory:
        keep_freed_memory()
    if settings.model_torch_threads:
        import torch

        torch.set_num_threads(settings.model_torch_threads)
    ensure_file_limit(settings.model_max_connections)
    uvicorn.run(
        create_app(settings),
        host=settings.model_host,
        port=settings.aip_http_port,
        http=guarded_protocol(AutoHTTPProtocol, settings.edge_limits),
        # No WebSocket routes: an upgrade would hand the connection to a protocol outside the
        # guard, its slot never given back.
        ws="none",
        log_level=settings.model_log_level.lower(),
        access_log=False,
    )
