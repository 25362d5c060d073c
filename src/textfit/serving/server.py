"""The HTTP endpoint: SageMaker's hosting contract (GET /ping, POST /invocations) on Starlette.

A request's path to the model: its body is read and decoded, its texts checked once (inference.decode_request),
then one queue forms batches of up to max_batch texts from the waiting requests (a large request in slices) and
each batch goes to the model as one forward pass; its rows are scattered back to their requests once. Inference
runs on a worker thread, never on the event loop. Every queue and body is bounded, and a client's mistake is a
4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from textfit import explain as explanations
from textfit.errors import RequestError, TextfitError
from textfit.predictor import Predicting
from textfit.serving.connections import BoundedHttpProtocol, ConnectionLimits, GracefulServer, LimitError, check_ranges
from textfit.serving.inference import decode_request, encode_response, negotiate

log = logging.getLogger("textfit")


@dataclass(frozen=True)
class ServeSettings:
    max_body_bytes: int = 6 * 1024 * 1024
    """SageMaker's real-time payload limit is 6 MB; larger bodies get 413."""
    max_batch: int = 32
    """Texts coalesced into one forward pass (with long_texts=window, a batch's windows go max_batch at a time)."""
    max_wait_ms: float = 2.0
    """How long a batch waits for more requests once the queue is drained (0: take what is queued)."""
    max_queue: int = 512
    """Requests waiting for inference, whatever their size; beyond it 503."""
    body_timeout_s: float = 30.0
    """Seconds a client may take to send a request body; then 408."""
    default_accept: str = "application/json"
    long_texts: str | None = None
    """truncate, head_tail or window; None: what the model chose in training (its long_texts hyperparameter)."""
    batch: bool = False
    """A batch transform's container (SAGEMAKER_BATCH): its records come back one to one (inference.py)."""
    batch_strategy: str = "MULTI_RECORD"
    """SAGEMAKER_BATCH_STRATEGY: under SINGLE_RECORD, a body of one record is answered as one object."""
    max_concurrent_transforms: int = 4
    explain_max_words: int = 64
    """Words (or contiguous groups of words) a text's explanation leaves out one at a time (Accept ...;explain):
    an explained text costs at most this many + 1 texts of inference, through the same queue."""
    explain_max_chars: int = 64 * 1024 * 1024
    """Characters of text an explained request may make the server read (each text once a word group it leaves
    out, and once whole); beyond it 413."""
    metrics: bool = True
    batches_in_flight: int = 1
    """Batches computed at once, each on all the inference threads: with more than one, the next batch is formed
    and started while one runs. On 2 cores two gained nothing on short texts (386 against 383 requests/s at
    concurrency 16) and lost 8% on 128-token texts, where each batch's compute already fills the cores
    (docs/benchmarks.md): one is the default."""

    def __post_init__(self) -> None:
        check_ranges(self, SERVE_RANGES)

    @classmethod
    def from_environment(cls, **overrides: Any) -> ServeSettings:
        """SageMaker's serving variables (payload limit, batch transform, default Accept), then `overrides`."""
        from textfit.core.environment import serve_environment

        env = serve_environment()
        if not math.isfinite(env.max_payload_mb) or env.max_payload_mb > 1024:  # int() of inf or NaN would raise
            raise LimitError(f"SAGEMAKER_MAX_PAYLOAD_IN_MB={env.max_payload_mb:g}: must be a number over 0, up to 1024")
        values: dict[str, Any] = {"max_body_bytes": int(env.max_payload_mb * 1024 * 1024),
                                  "default_accept": env.default_accept, "batch": env.batch,
                                  "batch_strategy": env.batch_strategy,
                                  "max_concurrent_transforms": env.max_concurrent_transforms,
                                  "explain_max_words": env.explain_max_words}
        return cls(**{**values, **{k: v for k, v in overrides.items() if v is not None}})


SERVE_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "max_body_bytes": (int, 1, 1024 * 1024 * 1024, False),
    "max_batch": (int, 1, 4096, False),
    "max_wait_ms": (float, 0, 10_000, False),
    "max_queue": (int, 1, 1_000_000, False),
    "body_timeout_s": (float, 0, 3600, True),
    "max_concurrent_transforms": (int, 1, 1024, False),
    "explain_max_words": (int, 1, 4096, False),
    "explain_max_chars": (int, 1, 1024 * 1024 * 1024, False),
    "batches_in_flight": (int, 1, 64, False),
}
"""The ranges of ServeSettings, those of `textfit serve`'s flags (--max-body-mb over 0, up to 1024, is in MiB)."""


@dataclass(eq=False)
class _Waiting:
    """A request in the queue: its texts, how many of them batches have taken, and its answer as rows come back."""

    texts: list[str]
    future: asyncio.Future[np.ndarray]
    taken: int = 0
    answered: int = 0
    rows: np.ndarray | None = field(default=None, repr=False)
    """The answer of a request answered in slices, filled slice by slice."""


Slice = tuple[_Waiting, int, int]
"""A request's texts [start, stop) in a batch."""


class Batcher:
    """Dynamic batching: one queue of requests; while a batch runs, requests queue up, and the next batch takes
    texts from them, oldest first, up to max_batch.

    A request with more texts than a batch has room for gives the batch what fits and goes to the back of the
    queue with the rest, so that it is never refused for its size and requests sent meanwhile take turns with it.
    A batch that fails is run again slice by slice, so that only the request at fault fails.
    """

    def __init__(self, predict: Callable[[list[str]], np.ndarray], settings: ServeSettings,
                 observe: Callable[[int], None]) -> None:
        self.predict, self.settings, self.observe = predict, settings, observe
        self.queue: deque[_Waiting] = deque()
        self.arrived = asyncio.Event()
        self.waiting = 0
        """Requests admitted and not yet answered."""
        self.last_group = 1
        """Requests in the previous batch: waiting for company only pays when requests come together."""
        self.executor = ThreadPoolExecutor(max_workers=settings.batches_in_flight,
                                           thread_name_prefix="textfit-inference")
        self.running: set[asyncio.Task[None]] = set()

    async def submit(self, texts: list[str]) -> np.ndarray:
        """The probabilities of a request's texts, rows in their order."""
        if self.waiting >= self.settings.max_queue:
            raise RequestError(503, f"the server is busy ({self.waiting} requests waiting); retry shortly")
        self.waiting += 1
        try:
            request = _Waiting(texts, asyncio.get_running_loop().create_future())
            self.queue.append(request)
            self.arrived.set()
            return await request.future
        finally:
            self.waiting -= 1

    def _take(self, batch: list[Slice], size: int) -> int:
        """Texts from the queue into `batch` (holding `size` texts) until it holds max_batch; its new size."""
        while size < self.settings.max_batch and self.queue:
            request = self.queue.popleft()
            if request.future.done():  # its client went away, or an earlier slice of it failed
                continue
            stop = min(len(request.texts), request.taken + self.settings.max_batch - size)
            batch.append((request, request.taken, stop))
            size += stop - request.taken
            request.taken = stop
            if stop < len(request.texts):
                self.queue.append(request)  # the rest, after the requests that came meanwhile
        return size

    async def _gather(self) -> list[Slice]:
        while not self.queue:
            self.arrived.clear()
            await self.arrived.wait()
        batch: list[Slice] = []
        size = self._take(batch, 0)
        # One client at a time (the previous batch was one request) gets no added latency; under load,
        # a short wait lets the requests being read join this batch.
        if size < self.settings.max_batch and self.settings.max_wait_ms > 0 and self.last_group > 1:
            await asyncio.sleep(self.settings.max_wait_ms / 1000)
            self._take(batch, size)
        self.last_group = max(1, len(batch))
        return batch

    @staticmethod
    def _answer(piece: Slice, probs: np.ndarray) -> None:
        """A slice's rows to its request; the request's answer once its last rows are in (a request answered in
        one slice gets its rows of the batch's array as they are)."""
        request, start, stop = piece
        if request.future.done():
            return
        if stop - start == len(request.texts):
            request.future.set_result(probs)
            return
        if request.rows is None:
            request.rows = np.empty((len(request.texts), probs.shape[1]), dtype=probs.dtype)
        request.rows[start:stop] = probs
        request.answered += stop - start
        if request.answered == len(request.texts):
            request.future.set_result(request.rows)

    async def _run_alone(self, piece: Slice) -> None:
        """A slice of a failed batch, on its own: its rows, or a 400 that blames its request alone."""
        request, start, stop = piece
        if request.future.done():
            return
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict,
                                                                     request.texts[start:stop])
        except Exception as exc:
            log.warning("a request's texts could not be classified: %s: %s", type(exc).__name__, exc)
            if not request.future.done():
                request.future.set_exception(RequestError(
                    400, f"the texts could not be classified ({type(exc).__name__}: {exc}); check that they are "
                         "ordinary text"))
            return
        self._answer(piece, probs)

    async def run(self) -> None:
        """Form batches for ever, at most `batches_in_flight` of them computing at once."""
        slots = asyncio.Semaphore(self.settings.batches_in_flight)
        while True:
            await slots.acquire()
            batch = await self._gather()
            if not batch:  # every request queued had gone
                slots.release()
                continue
            task = asyncio.create_task(self._run_batch(batch))
            self.running.add(task)  # the loop keeps only weak references to tasks

            def finished(done: asyncio.Task[None]) -> None:
                self.running.discard(done)
                slots.release()

            task.add_done_callback(finished)

    async def _run_batch(self, batch: list[Slice]) -> None:
        try:
            await self._compute(batch)
        except BaseException as exc:  # a fault of the server's own: no request of the batch waits for ever
            log.error("a batch failed: %s: %s", type(exc).__name__, exc)
            for request, _, _ in batch:
                if not request.future.done():
                    request.future.set_exception(RuntimeError(f"a batch failed ({type(exc).__name__})"))  # a 500
            if not isinstance(exc, Exception):
                raise

    async def _compute(self, batch: list[Slice]) -> None:
        texts = [text for request, start, stop in batch for text in request.texts[start:stop]]
        self.observe(len(texts))
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, texts)
        except Exception:  # one request's text may have failed everybody's batch: run them one by one
            for piece in batch:
                await self._run_alone(piece)
            return
        offset = 0
        for piece in batch:
            rows = piece[2] - piece[1]
            self._answer(piece, probs[offset : offset + rows])
            offset += rows


class Metrics:
    """Prometheus counters for /metrics: requests by status, latency, batch sizes."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        self.requests = Counter("textfit_requests", "Invocations by HTTP status", ["status"], registry=self.registry)
        self.latency = Histogram("textfit_request_seconds", "Invocation latency", registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10))
        self.batch = Histogram("textfit_batch_texts", "Texts per forward batch", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.waiting = Gauge("textfit_requests_waiting", "Requests admitted and not yet answered",
                             registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes: what the server holds

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _State:
    def __init__(self) -> None:
        self.classifier: Predicting | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body is {int(declared)} bytes, over the limit of {limit} bytes")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s; send it at once") from None


def _rss_mb() -> float:
    """The server's resident memory now (Linux), 0 where /proc is not there."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def _error(status: int, message: str) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(model: Predicting | Callable[[], Predicting], settings: ServeSettings | None = None
               ) -> Starlette:
    """The ASGI app for a loaded model (a Predictor, or a fitted TextClassifier), or for a function that loads
    one (then /ping says 503 until it is loaded).

    >>> app = create_app(lambda: Predictor.load("model/"))  # doctest: +SKIP
    """
    settings = settings or ServeSettings()
    state = _State()
    metrics = Metrics() if settings.metrics else None

    def observe_batch(n: int) -> None:
        if metrics:
            metrics.batch.observe(n)

    def predict(texts: list[str]) -> np.ndarray:
        """One batch the queue formed: one forward pass, in the order given (windows: max_batch at a time); each
        label's log-probability (log-odds), which an explanation reads and a prediction turns into probabilities."""
        return state.classifier.log_scores(texts, batch_size=settings.max_batch,  # type: ignore[union-attr]
                                           long_texts=settings.long_texts)

    async def load() -> None:
        try:
            state.classifier = model if isinstance(model, Predicting) else await asyncio.to_thread(model)
        except TextfitError as exc:
            state.error = str(exc)
            log.error("error: %s", exc)
            return
        log.info("Model loaded: %d classes (%s); resident memory %.0f MB", len(state.classifier.classes_),
                 ", ".join(state.classifier.classes_), _rss_mb())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.batcher = Batcher(predict, settings, observe_batch)
        if metrics:
            metrics.waiting.set_function(lambda: state.batcher.waiting if state.batcher else 0)
        worker = asyncio.create_task(state.batcher.run())
        loader = asyncio.create_task(load())
        try:
            yield
        finally:  # uvicorn has drained in-flight requests by now
            loader.cancel()
            worker.cancel()
            for task in list(state.batcher.running):
                task.cancel()
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
        body = await _read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        decoded = decode_request(body, request.headers.get("content-type"),
                                 settings.batch_strategy if settings.batch else None)
        clf = state.classifier
        explained = None
        if not decoded.texts:  # only blank lines
            probs = np.empty((0, len(clf.classes_)), dtype=np.float32)
        elif accept.explain:
            explained = await _explain(clf, state.batcher, decoded.texts)
            probs = np.asarray([r["probabilities"] for r in explained], dtype=np.float32)
        else:
            probs = clf.probabilities(await state.batcher.submit(decoded.texts))
        content, media_type = encode_response(probs, clf.classes_, accept, decoded.single, clf.thresholds_,
                                              clf.label_delimiter_, decoded.blank, settings.batch, explained)
        return Response(content, media_type=media_type)

    async def _explain(clf: Predicting, batcher: Batcher, texts: list[str]) -> list[dict[str, Any]]:
        """Each text's verbose record with its explanation by occlusion, its variants through the queue like any
        request's texts (so they are batched with others' and bounded alike)."""
        def plan() -> tuple[list[str], list[explanations.Occlusion]]:
            cut, _, extents = clf.explanation_inputs(texts, clf.resolve_long_texts(settings.long_texts))
            return cut, explanations.occlusion_plan(cut, extents, settings.explain_max_words)

        # on an inference thread, off the event loop (batching holds a lock while it tokenizes)
        cut, plans = await asyncio.get_running_loop().run_in_executor(batcher.executor, plan)
        size = explanations.cost(cut, plans)
        if size > settings.explain_max_chars:
            raise RequestError(413, f"explaining these texts would read {size} characters, over the limit of "
                                    f"{settings.explain_max_chars}; send fewer or shorter texts a request")
        rows = await batcher.submit(await asyncio.to_thread(explanations.variants, cut, plans))
        return [clf.explanation_record(p.words, *p.scores(rows)) for p in plans]

    async def execution_parameters(request: Request) -> Response:
        """Batch transform asks this once (README: Serve) to size its requests.

        No BatchStrategy: the service and the SageMaker Python SDK's local mode spell it differently. AWS's
        documentation of this endpoint ("Use your own inference code with batch transform") and AWS's own XGBoost
        container answer "MULTI_RECORD"; the SDK (2.x, sagemaker/local/entities.py and local/data.py) copies the
        value into the job and accepts only "MultiRecord" or "SingleRecord", failing on the other ("Invalid Batch
        Strategy"). Both take the key as optional and then default to multi-record, textfit's choice too: a
        strategy the user gives reaches the container as SAGEMAKER_BATCH_STRATEGY in either spelling."""
        return JSONResponse({"MaxConcurrentTransforms": settings.max_concurrent_transforms,
                             "MaxPayloadInMB": max(1, settings.max_body_bytes // (1024 * 1024))})

    async def metrics_endpoint(request: Request) -> Response:
        if metrics is None:
            return _error(404, "metrics are off")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    async def http_error(request: Request, exc: Exception) -> Response:
        """404, 405 and Starlette's other HTTP errors in the same JSON form as textfit's own."""
        status = getattr(exc, "status_code", 500)
        detail = getattr(exc, "detail", None) or "error"
        if status == 404:
            detail = f"no such path {request.url.path}; use GET /ping or POST /invocations"
        elif status == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return _error(status, detail)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server logged it")

    routes: list[Any] = [
        Route("/ping", ping, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/execution-parameters", execution_parameters, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, Exception: server_error})


def serve(model: Callable[[], Predicting], host: str = "127.0.0.1", port: int = 8080,
          settings: ServeSettings | None = None, limits: ConnectionLimits | None = None) -> None:
    """Load the model, then serve it under uvicorn until SIGTERM or SIGINT, which drain in-flight requests.

    The model loads before the port opens: a model that cannot load is an error (TextfitError) and a non-zero
    exit, never a server answering 503 for ever.
    """
    import uvicorn

    limits = limits or ConnectionLimits()
    app = create_app(model(), settings)  # the app logs "Model loaded" as it starts
    # The keep-alive goes to uvicorn as the float it is (uvicorn hands it to call_later): int() of it closed
    # idle connections at once for --keep-alive 0.5, and after 5 s for 5.9.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30,
                            limit_concurrency=limits.max_connections + 1, backlog=2048,
                            timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
                            http=BoundedHttpProtocol.with_limits(limits))
    GracefulServer(config).run()
