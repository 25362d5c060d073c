"""The SageMaker Python SDK (2.x) driving textfit's image in local mode, as a SageMaker user writes it: fit with
string hyperparameters and a validation channel, fit again from the first job's model artifact, deploy, predict
with each content type and Accept the README lists, batch transform, delete the endpoint.

Run by tests/container/test_sagemaker_sdk.py in a virtual environment of its own that holds the SDK (its
dependencies are not textfit's): `python sdk_job.py IMAGE WORKDIR`. It writes WORKDIR/results.json, which the
test compares with `textfit predict`. Nothing reaches AWS: the credentials are dummies and every AWS endpoint is
a closed port on localhost (AWS_ENDPOINT_URL), so that any call the SDK tried would fail here.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import boto3
from sagemaker.deserializers import CSVDeserializer, JSONDeserializer, JSONLinesDeserializer
from sagemaker.estimator import Estimator
from sagemaker.local import LocalSession
from sagemaker.serializers import CSVSerializer, IdentitySerializer, JSONLinesSerializer, JSONSerializer

ROLE = "arn:aws:iam::111111111111:role/textfit-local"
TEXTS = ["what a lovely, moving film", "a dull, slow plot and \"wooden\" acting", "très bon film, j'ai adoré 😀",
         "the worst film of the year"]
# batch transform's input: quoted fields with commas, a blank line, UTF-8
TRANSFORM_LINES = ['"what a lovely, moving film"', "a dull, slow plot", "", "très bon film, j'ai adoré 😀",
                   "the worst film of the year"]


def main(image: str, workdir: Path) -> None:
    data = Path(__file__).parents[2] / "examples" / "reviews"
    rows = list(csv.reader((data / "data.csv").open(encoding="utf-8")))
    train, validation = workdir / "train", workdir / "validation"
    for folder, part in ((train, rows[: len(rows) * 4 // 5]), (validation, rows[len(rows) * 4 // 5 :])):
        folder.mkdir(parents=True)
        with (folder / "data.csv").open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(part)

    session = LocalSession(boto_session=boto3.Session(region_name="us-east-1"))
    session.config = {"local": {"local_code": True, "container_root": str(workdir)}}
    results: dict[str, Any] = {}

    def estimator(**extra: Any) -> Estimator:
        # hyperparameters as JumpStart passes them: strings
        hp = {"model_id": "textfit-tc-all-minilm-l6-v2", "epochs": "1", "batch_size": "32",
              "learning_rate": "5e-5", "early_stopping": "False"}
        return Estimator(image_uri=image, role=ROLE, instance_count=1, instance_type="local",
                         output_path=f"file://{workdir}/output", sagemaker_session=session, hyperparameters=hp,
                         **extra)

    first = estimator(base_job_name="textfit-sdk")
    first.fit({"training": f"file://{train}", "validation": f"file://{validation}"}, logs=False)
    results["first_model"] = first.model_data

    further = estimator(base_job_name="textfit-sdk-further", model_uri=first.model_data, model_channel_name="model")
    further.fit({"training": f"file://{train}"}, logs=False)
    results["model"] = further.model_data

    predictor = further.deploy(initial_instance_count=1, instance_type="local")
    answers: list[dict[str, Any]] = []
    try:
        for content_type, serializer, body in [
            ("application/x-text", IdentitySerializer("application/x-text"), TEXTS[0].encode()),
            ("application/json", JSONSerializer(), TEXTS),
            ("application/jsonlines", JSONLinesSerializer(), [{"text": t} for t in TEXTS]),
            ("text/csv", CSVSerializer(), "\n".join(f'"{t.replace(chr(34), chr(34) * 2)}"' for t in TEXTS)),
        ]:
            for accept, deserializer in [
                ("application/json", JSONDeserializer()),
                ("application/json;verbose", JSONDeserializer(accept="application/json;verbose")),
                ("application/jsonlines", JSONLinesDeserializer()),
                ("text/csv", CSVDeserializer()),
            ]:
                predictor.serializer, predictor.deserializer = serializer, deserializer
                answer = predictor.predict(body)
                answers.append({"content_type": content_type, "accept": accept, "answer": answer})
    finally:
        predictor.delete_endpoint()
    results["predictions"], results["texts"] = answers, TEXTS

    transform_in = workdir / "transform-in"
    transform_in.mkdir()
    (transform_in / "input.csv").write_text("".join(line + "\n" for line in TRANSFORM_LINES), encoding="utf-8")
    results["transform_lines"] = TRANSFORM_LINES
    outputs = {}
    for name, strategy, accept in [("default", None, "application/jsonlines"),
                                   ("single", "SingleRecord", "application/json;verbose"),
                                   ("multi-csv", "MultiRecord", "text/csv;verbose")]:
        transformer = further.transformer(instance_count=1, instance_type="local", strategy=strategy,
                                          assemble_with="Line", accept=accept,
                                          output_path=f"file://{workdir}/transform-{name}")
        transformer.transform(f"file://{transform_in}", content_type="text/csv", split_type="Line", wait=True,
                              logs=False)
        outputs[name] = {"accept": accept, "output": (workdir / f"transform-{name}" / "input.csv.out").read_text(
            encoding="utf-8")}
    results["transforms"] = outputs
    (workdir / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
