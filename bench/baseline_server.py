"""The servers a user would write without textfit: FastAPI calling a transformers pipeline.

    python bench/baseline_server.py MODEL_DIR PORT [--batching] [--max-length 128]

Per request (the default): each request's text goes to the pipeline alone, in the thread pool. With
`--batching`: requests wait in an asyncio queue and a single task hands the pipeline up to 32 texts at once,
or what has arrived 2 ms after the first (the micro-batching written by hand that did best among the batching
servers tried on 2 cores; Ray Serve's `@serve.batch` did worse).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from transformers import pipeline

MAX_BATCH = 32
MAX_WAIT_S = 0.002

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("port", type=int, nargs="?", default=8080)
parser.add_argument("--batching", action="store_true")
parser.add_argument("--max-length", type=int, default=128, help="tokens read of a text (the model's max_seq_length)")
args = parser.parse_args()

# Texts are cut at the tokens the model was trained on, as textfit serves them.
pipe = pipeline("text-classification", model=args.model, top_k=None, device="cpu", truncation=True,
                max_length=args.max_length)
queue: asyncio.Queue[tuple[str, asyncio.Future[list[dict[str, Any]]]]] = asyncio.Queue()


async def batch_forever() -> None:
    loop = asyncio.get_running_loop()
    while True:
        batch = [await queue.get()]
        deadline = loop.time() + MAX_WAIT_S
        while len(batch) < MAX_BATCH and (left := deadline - loop.time()) > 0:
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except TimeoutError:
                break
        texts = [text for text, _ in batch]
        try:
            scores = await run_in_threadpool(pipe, texts, batch_size=len(texts))
        except Exception as exc:  # noqa: BLE001 - every waiting request hears of it
            for _, future in batch:
                future.set_exception(exc)
            continue
        for (_, future), answer in zip(batch, scores, strict=True):
            future.set_result(answer)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(batch_forever()) if args.batching else None
    yield
    if task is not None:
        task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/ping")
def ping() -> dict[str, str]:
    return {}


@app.post("/invocations")
async def invocations(request: Request) -> dict[str, object]:
    text = (await request.body()).decode("utf-8")
    if args.batching:
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        await queue.put((text, future))
        scores = await future
    else:
        scores = await run_in_threadpool(pipe, text)  # off the event loop; a list of {"label", "score"} per class
        scores = scores[0] if scores and isinstance(scores[0], list) else scores
    ordered = sorted(scores, key=lambda s: pipe.model.config.label2id[s["label"]])
    best = max(ordered, key=lambda s: s["score"])
    return {"probabilities": [s["score"] for s in ordered], "labels": [s["label"] for s in ordered],
            "predicted_label": best["label"]}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
