"""The HTTP endpoint: SageMaker's hosting contract (GET /ping, POST /invocations) on Starlette.

Concurrent requests are coalesced into batches by one background task; inference runs on a worker thread,
never on the event loop. Every queue and body is bounded, and a client's mistake is a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from textfit.classifier import TextClassifier
from textfit.errors import RequestError, TextfitError
from textfit.inference import decode_request, encode_response, negotiate

log = logging.getLogger("textfit")


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 6 * 1024 * 1024
    """SageMaker's real-time payload limit is 6 MB; larger bodies get 413."""
    max_batch: int = 32
    """Texts coalesced into one forward pass."""
    max_wait_ms: float = 2.0
    """How long a batch waits for more requests once the queue is drained (0: take what is queued)."""
    max_queue: int = 2048
    """Texts waiting for inference; beyond it requests get 503 with Retry-After."""
    default_accept: str = "application/json"
    long_texts: str = "truncate"
    batch_strategy: str = "MULTI_RECORD"
    max_concurrent_transforms: int = 4
    metrics: bool = True

    @classmethod
    def from_environment(cls, **overrides: Any) -> ServeSettings:
        """SageMaker's serving variables (payload limit, batch transform, default Accept), then `overrides`."""
        from textfit.sagemaker import serve_environment

        env = serve_environment()
        values: dict[str, Any] = {"max_body_bytes": int(env.max_payload_mb * 1024 * 1024),
                                  "default_accept": env.default_accept, "batch_strategy": env.batch_strategy,
                                  "max_concurrent_transforms": env.max_concurrent_transforms}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


class Batcher:
    """Dynamic batching: requests queue up while a batch runs, and the next batch takes them all."""

    def __init__(self, predict: Callable[[list[str]], np.ndarray], settings: ServeSettings,
                 observe: Callable[[int], None]) -> None:
        self.predict, self.settings, self.observe = predict, settings, observe
        self.queue: asyncio.Queue[tuple[list[str], asyncio.Future[np.ndarray]]] = asyncio.Queue()
        self.pending = 0
        self.last_group = 1
        """Requests in the previous batch: waiting for company only pays when requests come together."""
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textfit-inference")

    async def submit(self, texts: list[str]) -> np.ndarray:
        if self.pending + len(texts) > self.settings.max_queue:
            raise RequestError(503, f"the server is busy ({self.pending} texts queued); retry shortly")
        self.pending += len(texts)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            await self.queue.put((texts, future))
            return await future
        finally:
            self.pending -= len(texts)

    def _drain(self, group: list[tuple[list[str], asyncio.Future[np.ndarray]]], size: int) -> int:
        while size < self.settings.max_batch and not self.queue.empty():
            item = self.queue.get_nowait()
            group.append(item)
            size += len(item[0])
        return size

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self.queue.get()]
            size = self._drain(group, len(group[0][0]))
            # One client at a time (the previous batch was one request) gets no added latency; under load,
            # a short wait lets the requests being read join this batch.
            if size < self.settings.max_batch and self.settings.max_wait_ms > 0 and self.last_group > 1:
                await asyncio.sleep(self.settings.max_wait_ms / 1000)
                size = self._drain(group, size)
            self.last_group = len(group)
            texts = [t for ts, _ in group for t in ts]
            self.observe(len(texts))
            try:
                probs = await loop.run_in_executor(self.executor, self.predict, texts)
            except Exception as exc:  # a failed batch fails its requests, not the server
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for ts, future in group:
                if not future.done():
                    future.set_result(probs[start : start + len(ts)])
                start += len(ts)


class Metrics:
    """Prometheus counters for /metrics: requests by status, latency, batch sizes."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("textfit_requests", "Invocations by HTTP status", ["status"], registry=self.registry)
        self.latency = Histogram("textfit_request_seconds", "Invocation latency", registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
        self.batch = Histogram("textfit_batch_texts", "Texts per forward batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _State:
    def __init__(self) -> None:
        self.classifier: TextClassifier | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes, over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(model: TextClassifier | Callable[[], TextClassifier], settings: ServeSettings | None = None
               ) -> Starlette:
    """The ASGI app for a classifier, or for a function that loads one (then /ping says 503 until it is loaded).

    >>> app = create_app(lambda: TextClassifier.load("model/"))  # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    state = _State()
    metrics = Metrics() if settings.metrics else None

    def observe_batch(n: int) -> None:
        if metrics:
            metrics.batch.observe(n)

    def predict(texts: list[str]) -> np.ndarray:
        return state.classifier.predict_proba(texts, long_texts=settings.long_texts)  # type: ignore[union-attr]

    async def load() -> None:
        try:
            state.classifier = model if isinstance(model, TextClassifier) else await asyncio.to_thread(model)
        except TextfitError as exc:
            state.error = str(exc)
            log.error("error: %s", exc)
            return
        log.info("Model loaded: %d classes (%s)", len(state.classifier.classes_), ", ".join(state.classifier.classes_))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.batcher = Batcher(predict, settings, observe_batch)
        worker = asyncio.create_task(state.batcher.run())
        loader = asyncio.create_task(load())
        try:
            yield
        finally:  # uvicorn has drained in-flight requests by now
            loader.cancel()
            worker.cancel()
            state.batcher.executor.shutdown(wait=False, cancel_futures=True)

    async def ping(request: Request) -> Response:
        if state.classifier is None:
            return _error(503, state.error or "the model is loading")
        return Response(status_code=200)

    async def invocations(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await _invoke(request)
        except RequestError as exc:
            response = _error(exc.status, str(exc))
        except TextfitError as exc:
            response = _error(400, str(exc))
        if metrics:
            metrics.requests.labels(str(response.status_code)).inc()
            metrics.latency.observe(time.perf_counter() - start)
        return response

    async def _invoke(request: Request) -> Response:
        if state.classifier is None or state.batcher is None:
            raise RequestError(503, state.error or "the model is loading")
        accept = negotiate(request.headers.get("accept"), settings.default_accept)
        body = await _read_body(request, settings.max_body_bytes)
        decoded = decode_request(body, request.headers.get("content-type"))
        probs = await state.batcher.submit(decoded.texts)
        content, media_type = encode_response(probs, state.classifier.classes_, accept, decoded.single)
        return Response(content, media_type=media_type)

    async def execution_parameters(request: Request) -> Response:
        """Batch transform asks this once (spec §10) to size its requests."""
        return JSONResponse({"MaxConcurrentTransforms": settings.max_concurrent_transforms,
                             "BatchStrategy": settings.batch_strategy,
                             "MaxPayloadInMB": max(1, settings.max_body_bytes // (1024 * 1024))})

    async def metrics_endpoint(request: Request) -> Response:
        if metrics is None:
            return _error(404, "metrics are off")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    routes: list[Any] = [
        Route("/ping", ping, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/execution-parameters", execution_parameters, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def serve(model: Callable[[], TextClassifier], host: str = "127.0.0.1", port: int = 8080,
          settings: ServeSettings | None = None) -> None:
    """Run the app under uvicorn; SIGTERM stops accepting, drains in-flight requests, then exits."""
    import uvicorn

    app = create_app(model, settings)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                limit_concurrency=4096, backlog=2048)
