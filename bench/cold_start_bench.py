"""Cold start: seconds from starting a server to its first `GET /ping` 200, what a serverless or autoscaled
endpoint pays at every scale-out.

    python bench/cold_start_bench.py [--starts 10] [--image textfit] [--model DIR]

Servers, each started `--starts` times one after another on the same artifact of the embedded model:
- `textfit serve` on the host (the ONNX back end, SageMaker's default);
- the baseline a user would otherwise write: FastAPI with a transformers pipeline (bench/baseline_server.py);
- with --image, `docker run IMAGE serve` on the artifact mounted as /opt/ml/model, timed from `docker run` and
  from the container's own start (State.StartedAt: Docker's creation of the container excluded), and a bare
  container of the same image (`docker run --rm --entrypoint true`: start, exit and removal), Docker's floor.

Prints each one's median and worst, and the ratio of the medians to the baseline's.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until_ping(port: int, started: float, proc: subprocess.Popen[bytes] | None, timeout: float = 120) -> float:
    while time.perf_counter() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before answering /ping")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"no /ping 200 within {timeout} s")


def host_start(cmd: list[str]) -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([*cmd, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return until_ping(port, started, proc)
    finally:
        proc.terminate()
        proc.wait(30)


def docker_start(image: str, model: Path, since_process: list[float]) -> float:
    """Seconds from `docker run` to /ping 200; appends to `since_process` the seconds from the container's own
    start (its State.StartedAt, when its first process began) to that answer."""
    from datetime import datetime

    port, name = free_port(), f"textfit-cold-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-v",
                    f"{model}:/opt/ml/model:ro", image, "serve"], check=True, capture_output=True)
    try:
        elapsed = until_ping(port, started, None)
        answered = time.time()
        stamp = subprocess.run(["docker", "inspect", "-f", "{{.State.StartedAt}}", name], check=True,
                               capture_output=True, text=True).stdout.strip()
        whole, _, fraction = stamp.rstrip("Z").partition(".")
        process_start = datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (fraction or "0"))
        since_process.append(answered - process_start)
        return elapsed
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def bare_container(image: str) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--entrypoint", "true", image], check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--image", help="also time `docker run IMAGE serve` (and a bare container of it)")
    parser.add_argument("--model", type=Path, help="an artifact folder (default: trained here, 1 epoch)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            import textfit

            model = Path(tmp) / "model"
            textfit.train(ROOT / "examples" / "reviews", hyperparameters={"epochs": "1"}, output=model)
        model = model.resolve()
        runs: dict[str, list[float]] = {
            "textfit serve (host, onnx)": [],
            "baseline: FastAPI + pipeline (host)": [],
        }
        starters = {
            "textfit serve (host, onnx)": lambda: host_start(
                [sys.executable, "-m", "textfit", "serve", "--model", str(model), "--port"]),
            "baseline: FastAPI + pipeline (host)": lambda: host_start(
                [sys.executable, str(ROOT / "bench" / "baseline_server.py"), str(model)]),
        }
        since_process: list[float] = []
        if args.image:
            starters[f"docker run {args.image} serve"] = lambda: docker_start(args.image, model, since_process)
            starters[f"bare container of {args.image}"] = lambda: bare_container(args.image)
            runs.update({name: [] for name in starters if name not in runs})
        for _ in range(args.starts):  # interleaved: a slow minute of the machine touches each server alike
            for name, start in starters.items():
                runs[name].append(start())

    if since_process:
        runs[f"  the same, from the container's start ({args.image})"] = since_process
    base = statistics.median(runs["baseline: FastAPI + pipeline (host)"])
    print(f"\n{'server':<44} {'median s':>8} {'worst s':>8} {'median / baseline':>18}")
    for name, times in runs.items():
        print(f"{name:<44} {statistics.median(times):>8.2f} {max(times):>8.2f} "
              f"{statistics.median(times) / base:>18.2f}")


if __name__ == "__main__":
    main()
