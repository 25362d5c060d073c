"""`python -m textfit ...` for the tests, without paying the interpreter's start and torch's, transformers' and
textfit's imports for every command (about 4 s of CPU a command on 2 cores, most of the suite's subprocess tests).

A server process imports them once and forks a child per command. From the fork on, the child is the command as a
fresh `python -m textfit` would run it: its own pid (signals go to it, not to the server), arguments, environment,
working directory and standard streams (the caller's pipes, passed over a Unix socket), a reseeded `random`; it
exits through textfit's own `run()`. What differs from a fresh interpreter is what was imported before the
command's arguments were known: tests that check what a command imports (a server on the ONNX back end imports no
torch), or that need the interpreter's own start-up (bytes on the command line), start a real process instead.

`Popen` and `run` take the arguments of `subprocess.Popen` and `subprocess.run` that the tests use, and start any
command other than `python -m textfit` as a real process."""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

PIPE, DEVNULL, STDOUT = subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT


# ------------------------------------------------------------------------------------ the server


def _preload() -> None:
    """What textfit's commands import, up to their model's own modules (imported on first use, as in any run).
    Not onnxruntime: its import starts a thread of its own, which a fork would leave behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import onnx  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import torch.distributed.launcher.api  # noqa: F401
    import torch.onnx  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer  # noqa: F401
    from transformers.models.bert import modeling_bert  # noqa: F401

    import textfit.cli  # noqa: F401
    import textfit.jobs.evaluation  # noqa: F401
    import textfit.jobs.prediction  # noqa: F401
    import textfit.jobs.train  # noqa: F401
    import textfit.jobs.tuning  # noqa: F401
    import textfit.model.export  # noqa: F401
    import textfit.reports.plots  # noqa: F401
    import textfit.serving.server  # noqa: F401
    import textfit.training.loop  # noqa: F401
    import textfit.training.recipes  # noqa: F401


def _threads() -> list[str]:
    """This process's threads other than the main one, except jemalloc's background thread (pyarrow's allocator,
    imported under scikit-learn), which jemalloc's own fork handlers take care of."""
    names = [Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")
             if int(task) != os.getpid()]
    return [name for name in names if name != "jemalloc_bg_thd"]


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One request: a length, then the JSON of the command, with the child's stdin, stdout and stderr."""
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    if len(head) != 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ConnectionError("the request was cut short")
    (size,) = struct.unpack("!I", head)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("the request was cut short")
        body += chunk
    return json.loads(body), fds


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """Become the command: its streams, place, environment and arguments; run it; never return. The streams are
    set up as a fresh interpreter's in a UTF-8 locale (stdin keeps \\r, undecodable bytes pass as surrogates);
    the generators are reseeded as a fresh process's would be (only the hash seed stays the server's)."""
    import atexit
    import random
    import runpy
    import traceback

    code: int = 1
    try:
        for target, fd in zip((0, 1, 2), fds, strict=True):
            os.dup2(fd, target)
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()
        import numpy as np
        import torch

        np.random.seed()
        torch.seed()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", errors="surrogateescape", newline="\n",  # noqa: SIM115
                                         closefd=False)
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8",  # noqa: SIM115
                                                       errors="surrogateescape", write_through=unbuffered)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8",  # noqa: SIM115
                                                       errors="backslashreplace", line_buffering=True,
                                                       write_through=unbuffered)
        sys.argv = [sys.argv[0], *request["args"]]
        sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
        try:
            runpy.run_module("textfit", run_name="__main__", alter_sys=True)  # exits through textfit's run()
            code = 0
        except SystemExit as exc:  # argparse, or run()'s ordinary exit while a non-daemon thread runs
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = -signal.SIGINT
        except BaseException:  # noqa: BLE001 - as the interpreter would: a traceback and exit 1
            traceback.print_exc()
        threading._shutdown()  # type: ignore[attr-defined] # what the interpreter's exit waits for
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


def serve(path: str) -> None:
    """Accept commands on the socket at `path` until the process that started this one is gone."""
    parent = os.getppid()
    _preload()
    if _threads():  # fork copies only the calling thread: a pool started by an import would be lost
        raise SystemExit(f"forkserver: threads {_threads()} run after the imports; a fork would lose them")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    running: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener], [], [], 0.02)
        if ready:
            conn, _ = listener.accept()
            fds: list[int] = []
            try:
                request, fds = _receive(conn)
            except Exception:  # noqa: BLE001 - a client that went away, or a request cut short: the next one
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                conn.close()
                for other in running.values():
                    other.close()
                _child(request, fds)
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):  # the client left: the child still runs and is reaped below
                conn.sendall(f"{pid}\n".encode())
            running[pid] = conn
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in running:
                conn = running.pop(pid)
                with contextlib.suppress(OSError):
                    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


# ------------------------------------------------------------------------------------ the client

_server: tuple[subprocess.Popen[bytes], str] | None = None
_lock = threading.Lock()


def _socket_path() -> str | None:
    """The running server's socket (started on first use, one per test process); None if it cannot start."""
    global _server
    with _lock:
        if _server is not None and _server[0].poll() is not None:
            _server = None  # it died: start another
        if _server is None:
            folder = tempfile.mkdtemp(prefix="textfit-forkserver-")
            path = os.path.join(folder, "socket")
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            proc = subprocess.Popen([sys.executable, __file__, path], stdout=subprocess.PIPE, env=env,
                                    cwd=str(Path(__file__).parents[1]))
            assert proc.stdout is not None
            ready = proc.stdout.readline() == b"ready\n"
            proc.stdout.close()
            if not ready:
                proc.kill()
                proc.wait()
            _server = (proc, path if ready else "")

            def stop(proc: subprocess.Popen[bytes] = proc, folder: str = folder) -> None:
                proc.kill()
                proc.wait()
                shutil.rmtree(folder, ignore_errors=True)

            atexit.register(stop)
        return _server[1] or None


def _is_textfit(args: Sequence[str]) -> bool:
    return list(args[:3]) == [sys.executable, "-m", "textfit"]


class Forked:
    """A `python -m textfit` command forked by the server, as much of `subprocess.Popen` as the tests use."""

    def __init__(self, args: Sequence[str], path: str, *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
                 text: bool = False, env: dict[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
                 ) -> None:
        self.args = list(args)
        self.returncode: int | None = None
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        self._readers: dict[str, tuple[threading.Thread, list[Any]]] = {}
        theirs: list[int] = []
        mine: dict[str, int] = {}
        for name, spec, writes in (("stdin", stdin, False), ("stdout", stdout, True), ("stderr", stderr, True)):
            if spec == PIPE:
                read, write = os.pipe()
                theirs.append(write if writes else read)
                mine[name] = read if writes else write
            elif spec == DEVNULL:
                theirs.append(os.open(os.devnull, os.O_RDWR))
            elif spec == STDOUT:
                theirs.append(os.dup(theirs[1]))
            elif spec is None:
                theirs.append(os.dup({"stdin": 0, "stdout": 1, "stderr": 2}[name]))
            else:
                theirs.append(os.dup(spec if isinstance(spec, int) else spec.fileno()))
        for name, fd in mine.items():
            mode = ("w" if name == "stdin" else "r") + ("" if text else "b")
            setattr(self, name, open(fd, mode, encoding="utf-8" if text else None))  # noqa: SIM115
        request = json.dumps({"args": self.args[3:], "env": dict(os.environ if env is None else env),
                              "cwd": os.path.abspath(cwd if cwd is not None else os.getcwd())}).encode()
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(path)
        socket.send_fds(self._conn, [struct.pack("!I", len(request))], theirs)
        self._conn.sendall(request)
        for fd in theirs:
            os.close(fd)
        self._buffer = b""
        self.pid = int(self._line(None))

    def _line(self, timeout: float | None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(1e-3, deadline - time.monotonic())  # 0 would not block
            self._conn.settimeout(left)
            try:
                chunk = self._conn.recv(64)
            except (TimeoutError, BlockingIOError):
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            if not chunk:
                raise ConnectionError("the fork server went away")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self._conn], [], [], 0)
            if ready or b"\n" in self._buffer:
                self.wait()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
            self._conn.close()
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """As Popen's: nothing once the command has ended (here no zombie keeps its pid, so it is not signalled)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:  # noqa: A002
        if self.stdin is not None and "stdin" not in self._readers:
            def feed(stream: IO[Any] = self.stdin) -> None:
                with contextlib.suppress(BrokenPipeError, ValueError):
                    if input:
                        stream.write(input)
                with contextlib.suppress(BrokenPipeError, ValueError):
                    stream.close()
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            self._readers["stdin"] = (feeder, [])
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and name not in self._readers:
                got: list[Any] = []
                reader = threading.Thread(target=lambda s=stream, g=got: g.append(s.read()), daemon=True)
                reader.start()
                self._readers[name] = (reader, got)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread, _ in self._readers.values():
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        out = [self._readers[n][1][0] if n in self._readers else None for n in ("stdout", "stderr")]
        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None and not stream.closed:
                stream.close()
        return out[0], out[1]

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: object) -> None:
        for stream in (self.stdout, self.stderr, self.stdin):
            if stream is not None and not stream.closed:
                stream.close()
        self.wait()


def Popen(args: Sequence[str], **kwargs: Any) -> Any:  # noqa: N802 - subprocess.Popen's name
    path = _socket_path() if _is_textfit(args) else None
    if path is None:
        return subprocess.Popen(args, **kwargs)
    return Forked(args, path, **kwargs)


def run(args: Sequence[str], *, input: Any = None, capture_output: bool = False,  # noqa: A002
        timeout: float | None = None, check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    if capture_output:
        kwargs.update(stdout=PIPE, stderr=PIPE)
    if input is not None:
        kwargs["stdin"] = PIPE
    proc = Popen(args, **kwargs)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    done = subprocess.CompletedProcess(list(args), proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


if __name__ == "__main__":
    serve(sys.argv[1])
