"""The cost of int8 dynamic quantization: accuracy and speed of PyTorch, ONNX fp32 and ONNX int8, one model.

    python bench/quantize_bench.py

Fine-tunes the embedded all-MiniLM-L6-v2 on BBC News with the default hyperparameters (bench/bbc.py), exports
it with `textfit export --quantize int8`, and scores the 444 test articles with each engine: accuracy, agreement
with PyTorch, the largest probability change, and texts/s at 128 tokens.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    from bbc import channels

    from textfit import TextClassifier
    from textfit.data.channels import read_channel

    with tempfile.TemporaryDirectory() as tmp:
        train, test = channels(Path(tmp))
        TextClassifier().fit(read_channel(train)).save(Path(tmp) / "model")
        model = Path(tmp) / "model"
        TextClassifier.load(model).export_onnx(model, quantize=True)
        test_ch = read_channel(test)
        truth = np.array(test_ch.labels)
        rows = {}
        for name, backend, quantized in (("torch", "torch", False), ("onnx fp32", "onnx", False),
                                         ("onnx int8", "onnx", True)):
            clf = TextClassifier.load(model, backend=backend, quantized=quantized)
            clf.predict_proba(test_ch.texts[:32])  # warm-up
            start = time.perf_counter()
            proba = clf.predict_proba(test_ch.texts)
            seconds = time.perf_counter() - start
            predicted = np.array([int(clf.label_values_[i]) for i in proba.argmax(1)])
            rows[name] = (proba, float((predicted == truth).mean()), len(truth) / seconds)
    reference = rows["torch"][0]
    print(f"\n{'engine':<10} {'test acc':>9} {'agreement':>10} {'max |dp|':>9} {'texts/s':>8}")
    for name, (proba, accuracy, speed) in rows.items():
        agreement = float((proba.argmax(1) == reference.argmax(1)).mean())
        print(f"{name:<10} {accuracy:>9.4f} {agreement:>10.4f} {np.abs(proba - reference).max():>9.4f} {speed:>8.1f}")


if __name__ == "__main__":
    main()
