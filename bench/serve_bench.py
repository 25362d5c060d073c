"""Serving latency and throughput: textfit (ONNX Runtime and PyTorch back ends) against a FastAPI + pipeline server.

    python bench/serve_bench.py [--requests 400] [--threads 2]

Fine-tunes the embedded all-MiniLM-L6-v2 on examples/reviews (2 epochs), starts each server on 127.0.0.1 in
its own process, and drives it with the same load generator (httpx, asyncio) at concurrency 1 and 16 with the
sample's short sentences (`application/x-text`, `Accept: application/json;verbose`). Prints p50/p95 latency,
requests/s and the server's peak RSS, and the ratios to the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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


async def load(url: str, texts: list[str], requests: int, concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    headers = {"Content-Type": "application/x-text", "Accept": "application/json;verbose"}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        async def user() -> None:
            for i in counter:
                start = time.perf_counter()
                response = await client.post(url, content=texts[i % len(texts)].encode(), headers=headers)
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text

        for i in range(min(20, requests)):  # warm-up
            await client.post(url, content=texts[i % len(texts)].encode(), headers=headers)
        begin = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        return latencies, requests / (time.perf_counter() - begin)


def measure(name: str, cmd: list[str], port: int, env: dict[str, str], texts: list[str], requests: int
            ) -> dict[str, float]:
    print(f"serving with {name} ...", flush=True)
    proc = start(cmd, port, env)
    try:
        out: dict[str, float] = {}
        for concurrency in (1, 16):
            n = requests if concurrency == 1 else requests * 3
            latencies, rps = asyncio.run(load(f"http://127.0.0.1:{port}/invocations", texts, n, concurrency))
            cuts = statistics.quantiles(latencies, n=20)
            out[f"p50_c{concurrency}"] = statistics.median(latencies) * 1000
            out[f"p95_c{concurrency}"] = cuts[18] * 1000
            out[f"rps_c{concurrency}"] = rps
        out["rss_mb"] = peak_rss_mb(proc.pid)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400, help="requests at concurrency 1 (x3 at 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="inference threads per server")
    args = parser.parse_args()

    import textfit

    with (ROOT / "examples" / "reviews" / "data.csv").open(encoding="utf-8", newline="") as f:
        texts = [row[1] for row in csv.reader(f)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        textfit.train(ROOT / "examples" / "reviews", hyperparameters={"epochs": "2"}, output=model)
        textfit.TextClassifier.load(model).export_onnx(model, quantize=True)
        cli = [sys.executable, "-m", "textfit", "serve", "--model", str(model), "--threads", str(args.threads)]
        results = {}
        for name, extra in (("textfit onnx", ["--backend", "onnx"]), ("textfit onnx int8", ["--backend", "onnx",
                                                                                              "--quantized"]),
                            ("textfit torch", ["--backend", "torch"])):
            port = free_port()
            results[name] = measure(name, [*cli, *extra, "--port", str(port)], port, env, texts, args.requests)
        port = free_port()
        results["baseline (FastAPI + pipeline)"] = measure(
            "baseline", [sys.executable, str(ROOT / "bench" / "baseline_server.py"), str(model), str(port)], port,
            env, texts, args.requests)

    print(f"\n{'server':<32} {'p50 c1 ms':>9} {'p95 c1 ms':>9} {'rps c1':>7} {'p50 c16 ms':>10} {'p95 c16 ms':>10} "
          f"{'rps c16':>8} {'peak MB':>8}")
    for name, r in results.items():
        print(f"{name:<32} {r['p50_c1']:>9.1f} {r['p95_c1']:>9.1f} {r['rps_c1']:>7.1f} {r['p50_c16']:>10.1f} "
              f"{r['p95_c16']:>10.1f} {r['rps_c16']:>8.1f} {r['rss_mb']:>8.0f}")
    base = results["baseline (FastAPI + pipeline)"]
    for name in ("textfit onnx", "textfit onnx int8", "textfit torch"):
        r = results[name]
        print(f"{name} vs baseline: p50 at concurrency 1 {r['p50_c1'] / base['p50_c1']:.2f}x, "
              f"requests/s at concurrency 16 {r['rps_c16'] / base['rps_c16']:.2f}x")


if __name__ == "__main__":
    main()
