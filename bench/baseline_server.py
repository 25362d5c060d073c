"""The server a user would write without textfit: FastAPI calling a transformers pipeline per request.

    python bench/baseline_server.py MODEL_DIR PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from transformers import pipeline

pipe = pipeline("text-classification", model=sys.argv[1], top_k=None, device="cpu")
app = FastAPI()


@app.get("/ping")
def ping() -> dict[str, str]:
    return {}


@app.post("/invocations")
async def invocations(request: Request) -> dict[str, object]:
    text = (await request.body()).decode("utf-8")
    scores = await run_in_threadpool(pipe, text)  # off the event loop; a list of {"label", "score"} per class
    scores = scores[0] if scores and isinstance(scores[0], list) else scores
    ordered = sorted(scores, key=lambda s: pipe.model.config.label2id[s["label"]])
    best = max(ordered, key=lambda s: s["score"])
    return {"probabilities": [s["score"] for s in ordered], "labels": [s["label"] for s in ordered],
            "predicted_label": best["label"]}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
