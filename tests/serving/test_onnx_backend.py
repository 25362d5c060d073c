"""The ONNX Runtime back end: the server's default, which runs without torch and answers what PyTorch answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from textfit import TextClassifier

GOOD, BAD = "the film was good and great", "the plot was bad and awful"
TEXTS = [GOOD, BAD, "good", "the very long plot was really quite awful and the acting was bad " * 3]


@pytest.fixture
def onnx(tiny_artifact: Path) -> TextClassifier:
    return TextClassifier.load(tiny_artifact, backend="onnx")


def test_a_server_on_onnx_runtime_never_imports_torch(tiny_artifact: Path) -> None:
    """`textfit serve`'s path (the CLI module, create_app, a load on ONNX Runtime) in a fresh process."""
    code = f"""
import json, sys, time
import textfit.cli
from starlette.testclient import TestClient
from textfit.classifier import TextClassifier
from textfit.serving.server import create_app

app = create_app(lambda: TextClassifier.load({str(tiny_artifact)!r}, backend="onnx"))
with TestClient(app) as client:
    while client.get("/ping").status_code != 200:
        time.sleep(0.01)
    statuses = [client.post("/invocations", content=body, headers={{"Content-Type": kind}}).status_code
                for body, kind in [("a good film", "application/x-text"), (json.dumps(["good", "bad"] * 40),
                                   "application/json"), ("good\\nbad\\n", "text/csv")]]
print(statuses, "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[200, 200, 200] False"


def test_onnx_and_torch_agree(tiny_artifact: Path, onnx: TextClassifier) -> None:
    torch_clf = TextClassifier.load(tiny_artifact)
    expected = torch_clf.predict_proba(TEXTS)
    # in one padded batch, and one by one (no padding): the exported graph must honour the attention mask
    np.testing.assert_allclose(onnx.predict_proba(TEXTS), expected, atol=1e-4)
    np.testing.assert_allclose(np.vstack([onnx.predict_proba([t]) for t in TEXTS]), expected, atol=1e-4)
    # and grouped by length into batches of 2, windows included
    np.testing.assert_allclose(onnx.predict_proba(TEXTS, batch_size=2), expected, atol=1e-4)
    np.testing.assert_allclose(onnx.predict_proba(TEXTS, long_texts="window"),
                               torch_clf.predict_proba(TEXTS, long_texts="window"), atol=1e-4)


def test_the_onnx_tokenizer_gives_autotokenizers_ids(tiny_artifact: Path, onnx: TextClassifier) -> None:
    """The ONNX side reads tokenizer.json through transformers' generic fast tokenizer (no torch import);
    AutoTokenizer's class gives the same ids, truncated and in windows."""
    reference = TextClassifier.load(tiny_artifact).tokenizer_
    texts = [*TEXTS, "Good, GREAT film!", "unknown words here"]
    for options in ({"truncation": True, "max_length": 8},
                    {"truncation": True, "max_length": 8, "stride": 2, "return_overflowing_tokens": True}):
        ours, theirs = onnx.tokenizer_(texts, **options), reference(texts, **options)
        assert ours["input_ids"] == theirs["input_ids"]
        assert ours.get("overflow_to_sample_mapping") == theirs.get("overflow_to_sample_mapping")
    assert onnx.tokenizer_.pad_token_id == reference.pad_token_id

