"""Serving latency and throughput: textfit (ONNX Runtime and PyTorch back ends) against FastAPI + pipeline servers.

    python bench/serve_bench.py [--texts short|long] [--requests 400] [--threads 2] [--only NAME,...] [--model DIR]

Fine-tunes the embedded all-MiniLM-L6-v2 on examples/reviews (2 epochs), starts each server on 127.0.0.1 in
its own process, and drives it with the same load generator (httpx, asyncio) at concurrency 1 and 16
(`application/x-text`, `Accept: application/json;verbose`). Texts: `short`, the sample's review sentences;
`long`, 300-word reviews made of them (read at the model's 128 tokens by every server: the model's compute
dominates). Baselines (bench/baseline_server.py): a transformers pipeline called per request, and the same
pipeline behind a hand-written micro-batching queue (32 texts / 2 ms). Before the load, each server answers 20
fixed texts and the largest difference of its probabilities from textfit's ONNX fp32 is printed (identical
answers: under 1e-5), and "under load" the largest difference of its answers to those texts at concurrency 16,
batched with others, from its own answers to them alone. Prints p50/p95 latency, requests/s, the server's peak RSS, and the ratios: requests/s at
concurrency 16 to the batching server's, p50 at concurrency 1 to the per-request server's.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


async def _user(port: int, bodies: list[bytes], counter: Iterator[int], latencies: list[float],
                seen: dict[int, bytes]) -> None:
    """One client on one keep-alive connection: a request, its whole answer, the next request. Requests are
    written as bytes and answers read by their Content-Length: a client that costs the machine little, so
    that the servers, not the load generator, set the pace (httpx's pool reached 382 requests/s at
    concurrency 16 against a server that answers a constant: less than the servers measured here)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in counter:
            body = bodies[i % len(bodies)]
            start = time.perf_counter()
            writer.write(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-text\r\n"
                         b"Accept: application/json;verbose\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            seen.setdefault(i % len(bodies), answer)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"request {i}: {head.splitlines()[0].decode()}: {answer[:200].decode()}")
    finally:
        writer.close()


async def load(port: int, texts: list[str], requests: int, concurrency: int
               ) -> tuple[list[float], float, dict[int, bytes]]:
    """Latencies of `requests` requests from `concurrency` clients, the requests answered a second, and the
    first answer to each text (the body as it came)."""
    bodies = [t.encode() for t in texts]
    await _user(port, bodies, iter(range(20)), [], {})  # warm-up
    latencies: list[float] = []
    seen: dict[int, bytes] = {}
    counter = iter(range(requests))
    begin = time.perf_counter()
    await asyncio.gather(*(_user(port, bodies, counter, latencies, seen) for _ in range(concurrency)))
    return latencies, requests / (time.perf_counter() - begin), seen


def answers(url: str, texts: list[str]) -> list[dict[str, float]]:
    """Each text's probabilities by label, one request a text."""
    headers = {"Content-Type": "application/x-text", "Accept": "application/json;verbose"}
    out = []
    with httpx.Client(timeout=60) as client:
        for text in texts:
            body = client.post(url, content=text.encode(), headers=headers).json()
            out.append(dict(zip(body["labels"], body["probabilities"], strict=True)))
    return out


def measure(name: str, cmd: list[str], port: int, env: dict[str, str], texts: list[str], requests: int,
            fixed: list[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
    print(f"serving with {name} ...", flush=True)
    proc = start(cmd, port, env)
    try:
        url = f"http://127.0.0.1:{port}/invocations"
        given = answers(url, fixed)
        out: dict[str, float] = {}
        for concurrency in (1, 16):
            n = requests if concurrency == 1 else requests * 3
            latencies, rps, seen = asyncio.run(load(port, texts, n, concurrency))
            cuts = statistics.quantiles(latencies, n=20)
            out[f"p50_c{concurrency}"] = statistics.median(latencies) * 1000
            out[f"p95_c{concurrency}"] = cuts[18] * 1000
            out[f"rps_c{concurrency}"] = rps
        out["rss_mb"] = peak_rss_mb(proc.pid)
        # the fixed texts' answers under concurrency 16 (batched with others) against their answers alone
        pairs = [(json.loads(seen[i]), given[i]) for i in range(len(fixed)) if i in seen]
        out["load_dp"] = max((abs(p - alone[label]) for body, alone in pairs
                              for label, p in zip(body["labels"], body["probabilities"], strict=True)), default=0.0)
        return out, given
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def long_reviews(sentences: list[str], words: int = 300, count: int = 60) -> list[str]:
    """`count` texts of about `words` words, each the sample's sentences joined from a different start."""
    out = []
    for start in range(count):
        picked: list[str] = []
        i = start * 7
        while sum(len(t.split()) for t in picked) < words:
            picked.append(sentences[i % len(sentences)])
            i += 1
        out.append(" ".join(" ".join(picked).split()[:words]))
    return out


SERVERS = ("textfit onnx", "textfit onnx two batches at once", "textfit onnx int8", "textfit torch",
           "per-request pipeline", "batching pipeline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", choices=["short", "long"], default="short")
    parser.add_argument("--requests", type=int, default=400, help="requests at concurrency 1 (x3 at 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="inference threads per server")
    parser.add_argument("--only", default=",".join(SERVERS), help="comma-separated servers to run")
    parser.add_argument("--model", help="a model folder to serve (default: one trained on examples/reviews, 2 epochs)")
    args = parser.parse_args()
    chosen = [name for name in SERVERS if name in args.only.split(",")]

    import textfit
    from textfit.model.export import onnx_path

    with (ROOT / "examples" / "reviews" / "data.csv").open(encoding="utf-8", newline="") as f:
        sentences = [row[1] for row in csv.reader(f)]
    texts = sentences if args.texts == "short" else long_reviews(sentences)
    fixed = texts[:20]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model or Path(tmp) / "model")
        if not args.model:
            textfit.train(ROOT / "examples" / "reviews", hyperparameters={"epochs": "2"}, output=model)
        clf = textfit.TextClassifier.load(model)
        if not onnx_path(model, quantized=True).is_file():
            clf.export_onnx(model, quantize=True)
        max_length = str(clf.hyperparameters_.max_seq_length)
        cli = [sys.executable, "-m", "textfit", "serve", "--model", str(model), "--threads", str(args.threads)]
        pipe = [sys.executable, str(ROOT / "bench" / "baseline_server.py"), str(model)]
        commands = {"textfit onnx": [*cli, "--backend", "onnx", "--port"],
                    "textfit onnx two batches at once": [*cli, "--backend", "onnx", "--batches-in-flight", "2", "--port"],
                    "textfit onnx int8": [*cli, "--backend", "onnx", "--quantized", "--port"],
                    "textfit torch": [*cli, "--backend", "torch", "--port"],
                    "per-request pipeline": pipe, "batching pipeline": pipe}
        results, given = {}, {}
        for name in chosen:
            port = free_port()
            cmd = [*commands[name], str(port)]  # textfit's --port, the baseline's PORT
            if "pipeline" in name:
                cmd += ["--max-length", max_length, *(["--batching"] if name.startswith("batching") else [])]
            results[name], given[name] = measure(name, cmd, port, env, texts, args.requests, fixed)
            print(f"  {name}: {results[name]}", flush=True)

    reference = given.get("textfit onnx") or next(iter(given.values()))
    print(f"\n{args.texts} texts, {args.threads} threads a server")
    print(f"{'server':<31} {'p50 c1 ms':>9} {'p95 c1 ms':>9} {'rps c1':>7} {'p50 c16 ms':>10} {'p95 c16 ms':>10} "
          f"{'rps c16':>8} {'peak MB':>8} {'max |dp|':>9} {'under load':>10}")
    for name, r in results.items():
        differs = max(abs(a[label] - b[label]) for a, b in zip(given[name], reference, strict=True) for label in a)
        print(f"{name:<31} {r['p50_c1']:>9.1f} {r['p95_c1']:>9.1f} {r['rps_c1']:>7.1f} {r['p50_c16']:>10.1f} "
              f"{r['p95_c16']:>10.1f} {r['rps_c16']:>8.1f} {r['rss_mb']:>8.0f} {differs:>9.1e} {r['load_dp']:>10.1e}")
    for name in (n for n in results if n.startswith("textfit")):
        r = results[name]
        if "batching pipeline" in results:
            print(f"{name}: requests/s at concurrency 16 {r['rps_c16'] / results['batching pipeline']['rps_c16']:.2f}x "
                  "the batching pipeline's")
        if "per-request pipeline" in results:
            print(f"{name}: p50 at concurrency 1 {r['p50_c1'] / results['per-request pipeline']['p50_c1']:.2f}x "
                  "the per-request pipeline's")


if __name__ == "__main__":
    main()
