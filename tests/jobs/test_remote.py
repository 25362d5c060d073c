"""s3:// channels, models and outputs against a local S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, make_rows, write_csv
from textfit import load, train
from textfit.errors import DataError

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    import logging

    import httpx

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    httpx.post(f"{endpoint}/moto-api/reset")  # moto keeps buckets in-process across servers: start empty
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                        "AWS_ENDPOINT_URL_S3": endpoint}.items():
        monkeypatch.setenv(name, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bucket")
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_train_from_and_to_s3_then_load_from_s3(s3: object, tiny_bert: Path, tmp_path: Path) -> None:
    local = write_csv(tmp_path / "train" / "data.csv", make_rows(48))
    s3.put(str(local), "bucket/data/training/data.csv")  # type: ignore[attr-defined]
    clf = train("s3://bucket/data/training/", model_id=str(tiny_bert), hyperparameters=FAST,
                output="s3://bucket/output/model", tar=True)
    listing = {p.rsplit("/", 1)[-1] for p in s3.ls("bucket/output/model")}  # type: ignore[attr-defined]
    assert {"model.safetensors", "config.json", "textfit.json", "labels_info.json"} <= listing
    assert s3.exists("bucket/output/model.tar.gz")  # type: ignore[attr-defined]
    again = load("s3://bucket/output/model.tar.gz")
    assert again.predict(["good great film"]) == clf.predict(["good great film"])


def test_incremental_training_from_an_s3_model(s3: object, tiny_bert: Path, tmp_path: Path) -> None:
    local = write_csv(tmp_path / "train" / "data.csv", make_rows(48))
    s3.put(str(local), "bucket/data/data.csv")  # type: ignore[attr-defined]
    train("s3://bucket/data/", model_id=str(tiny_bert), hyperparameters=FAST, output="s3://bucket/first", tar=True)
    more = train("s3://bucket/data/data.csv", model="s3://bucket/first.tar.gz", hyperparameters={**FAST, "epochs": "1"})
    assert more.manifest_["initialized_from"] == "s3://bucket/first.tar.gz"


def test_a_missing_s3_channel_is_a_clear_error(s3: object) -> None:
    with pytest.raises(DataError, match="s3://bucket/nothing/: no such object or prefix"):
        train("s3://bucket/nothing/", hyperparameters=FAST)
