"""Word attributions (explain.py, Predicting.explain, `textfit predict --explain`): the word a model keys on comes
first, offsets give back the exact words of the text, both engines rank alike, the cost is bounded."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import forkserver
from tests.conftest import FAMILIES, FAST, NEGATIVE, NEUTRAL, POSITIVE, build_tiny_family, write_csv
from textfit import TextClassifier
from textfit.errors import DataError
from textfit.explain import METHODS, occlusion, words
from textfit.predictor import Predictor


@pytest.fixture(scope="module")
def onnx(tiny_artifact: Path) -> Predictor:
    return Predictor.load(tiny_artifact)


@pytest.fixture(scope="module")
def marker_model(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained to key on one word: label 1 exactly when "superb" is in the text, among words of
    both sentiments in both labels. Trained gently: a tiny model trained hard turns into a step function of its
    embeddings, on whose cliff Integrated Gradients' quadrature lands anywhere (the method's known weakness)."""
    from textfit.jobs.train import train

    rng = random.Random(3)
    others = [w for w in POSITIVE + NEGATIVE + NEUTRAL if w != "superb"]
    rows = []
    for i in range(240):
        text = rng.sample(others, 6)
        if i % 2:  # the same length in both labels: the word, not the count of words, tells them apart
            text[rng.randrange(6)] = "superb"
        rows.append((i % 2, " ".join(text)))
    root = tmp_path_factory.mktemp("marker")
    write_csv(root / "train" / "data.csv", rows)
    train(root / "train", model_id=str(tiny_bert), output=root / "model",
          hyperparameters={**FAST, "epochs": "8", "learning_rate": "0.0005"})
    return root / "model"


@pytest.fixture(scope="module")
def marker(marker_model: Path) -> Predictor:
    return Predictor.load(marker_model)


@pytest.mark.parametrize("method", METHODS)
def test_the_marker_word_gets_the_top_attribution(marker: Predictor, marker_model: Path, method: str) -> None:
    model = marker if method == "occlusion" else TextClassifier.load(marker_model)  # gradients: PyTorch's
    rng = random.Random(11)
    others = [w for w in POSITIVE + NEGATIVE + NEUTRAL if w != "superb"]
    texts = []
    for _ in range(10):
        words_ = rng.sample(others, 6)
        words_[rng.randrange(6)] = "superb"
        texts.append(" ".join(words_))
    for record in model.explain(texts, method=method):
        assert record["predicted_label"] == "1", record
        top = max(record["explanation"], key=lambda w: w["score"])
        assert top["word"] == "superb" and top["score"] > 0, record["explanation"]


def test_a_word_against_the_label_scores_below_zero(onnx: Predictor) -> None:
    """The tiny artifact answers 1 unless a negative word is there: "awful" carries label 0, and pulls away from 1."""
    record = onnx.explain(["the film was very awful"], all_labels=True)[0]
    assert record["predicted_label"] == "0"
    assert max(record["explanation"], key=lambda w: w["score"])["word"] == "awful"
    assert min(record["explanations"]["1"], key=lambda w: w["score"])["word"] == "awful"


@pytest.mark.parametrize("text", ["Line one 😀\nnaïve café — it's  broken!", "日本語のテキスト、good です。",
                                  "tabs\tand\r\nwindows lines, 👩‍👩‍👧 family", "   ", "x"])
def test_offsets_give_back_the_words_of_the_text(onnx: Predictor, text: str) -> None:
    record = onnx.explain([text])[0]
    assert all(text[w["start"]:w["end"]] == w["word"] for w in record["explanation"])
    covered = "".join(w["word"] for w in record["explanation"])
    assert covered == "".join(text.split())  # every character but whitespace, each in one word


def test_onnx_and_torch_rank_the_words_alike(tiny_artifact: Path, onnx: Predictor) -> None:
    text = "the very long plot was really quite good and the acting was bad and awful"
    torch_scores = [w["score"] for w in TextClassifier.load(tiny_artifact).explain(
        [text], method="occlusion")[0]["explanation"]]
    onnx_scores = [w["score"] for w in onnx.explain([text])[0]["explanation"]]
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)
    assert np.argsort(onnx_scores)[-2:].tolist() == np.argsort(torch_scores)[-2:].tolist()


def test_every_label_on_request_and_the_cost_bounded(onnx: Predictor) -> None:
    text = " ".join(["good"] + ["long"] * 199)  # 200 words, explained in at most 8 groups
    seen: list[int] = []

    def counted(variants: list[str]) -> np.ndarray:
        seen.append(len(variants))
        return onnx.predict_logits(variants)

    (found, scores, _), = occlusion(counted, [text], [None], max_words=8)
    assert seen == [9] and len(found) == 200 and scores.shape == (200, 2)
    assert len({tuple(scores[i]) for i in range(25)}) == 1  # a group's words share its score
    record = onnx.explain(["the film was awful"], all_labels=True)[0]
    assert set(record["explanations"]) == {"0", "1"}
    awful = [w for w in record["explanations"]["0"] if w["word"] == "awful"][0]
    against = [w for w in record["explanations"]["1"] if w["word"] == "awful"][0]
    assert awful["score"] > 0 > against["score"]  # two classes: a word for one is a word against the other
    with pytest.raises(DataError, match="at least one word"):
        onnx.explain(["good"], max_words=0)
    with pytest.raises(DataError, match="not a single string"):
        onnx.explain("good")  # type: ignore[arg-type]


def test_the_record_is_the_prediction(onnx: Predictor) -> None:
    texts = ["the film was awful", "a very good movie"]
    for record, row in zip(onnx.explain(texts), onnx.predict_proba(texts)):
        np.testing.assert_allclose(record["probabilities"], row, atol=1e-6)


def test_words_split_as_documented() -> None:
    assert [w.word for w in words("it's a film, isn't it?! 😀")] == ["it's", "a", "film", ",", "isn't", "it", "?",
                                                                    "!", "😀"]


def test_predict_explain_on_the_command_line(tiny_artifact: Path) -> None:
    done = forkserver.run([sys.executable, "-m", "textfit", "predict", "--model", str(tiny_artifact), "--backend",
                           "onnx", "--explain", "--text", "the film was long and awful"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["predicted_label"] == "0" and max(record["explanation"], key=lambda w: w["score"])["word"] == "awful"


def test_words_past_what_the_model_reads_are_not_listed(onnx: Predictor) -> None:
    limit = onnx.hyperparameters_.max_seq_length
    text = " ".join(["good"] * (limit * 3))
    record = onnx.explain([text])[0]
    assert len(record["explanation"]) == limit - 2  # a word a token, less [CLS] and [SEP]
    windows = onnx.explain([text], long_texts="window", max_words=limit * 4)[0]
    assert len(windows["explanation"]) == limit * 3


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_integrated_gradients_add_up_on_every_family(family: str, tmp_path: Path) -> None:
    """Completeness (Sundararajan et al., 2017): the words' attributions add up to the change of the label's
    score from the baseline to the text, on a randomly initialised (smooth) model of each family: the hooks reach
    each family's token embeddings, and every token's part lands on a word."""
    import torch

    from textfit.data.channels import ClassSet
    from textfit.explain import Window, baseline_token, integrated_gradients, words
    from textfit.predictor import load_torch_model

    folder = build_tiny_family(family, tmp_path / family)
    model = load_torch_model(str(folder), False, ClassSet(["a", "b", "c"], ["a", "b", "c"])).eval()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "the film was good but the plot awful"
    enc = tokenizer([text], return_offsets_mapping=True, return_special_tokens_mask=True)
    window = Window(enc["input_ids"][0], [tuple(o) for o in enc["offset_mapping"][0]],
                    [bool(s) for s in enc["special_tokens_mask"][0]])
    found = words(text)
    token_types = "token_type_ids" in tokenizer.model_input_names and family not in ("distilbert", "modernbert")

    scale = 1.0

    def log_score(logits: torch.Tensor) -> torch.Tensor:  # a label's logit, made to change by about 1 below
        return scale * logits

    embeddings = model.get_input_embeddings()
    nothing = baseline_token(model, tokenizer)
    zero = not bool(embeddings.weight[0].abs().sum() > 0)  # an Embedding's padding row, as most families make it
    assert nothing == (4 if zero else 0)  # then [MASK]
    baseline = torch.tensor([[t if s else nothing for t, s in zip(window.ids, window.special)]])

    def score(at_baseline: bool) -> float:
        """The label's score for the text, or with the baseline's token embeddings in place of the text's
        (positions and everything else the text's: the path's end, as Integrated Gradients walks it)."""
        ids = torch.tensor([window.ids])
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if token_types:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        hook = embeddings.register_forward_hook(lambda module, args, out: embeddings.weight[baseline]) \
            if at_baseline else None
        try:
            with torch.no_grad():
                return float(log_score(model(**inputs).logits)[0, 2])
        finally:
            if hook is not None:
                hook.remove()

    scale = 1.0 / abs(score(False) - score(True))  # a new head's logits are tiny
    change = score(False) - score(True)
    attributions = integrated_gradients(model, [window], found, np.ones((1, 1)), [2], log_score, pad_id=nothing,
                                        token_types=token_types, steps=64)
    assert attributions.shape == (len(found), 1)
    assert 0.2 < abs(change) < 5
    np.testing.assert_allclose(attributions.sum(), change, rtol=0.05, atol=1e-4)


def test_gradients_need_the_pytorch_weights_and_the_default_follows_them(onnx: Predictor, tiny_artifact: Path,
                                                                        ) -> None:
    for method in ("gradient", "integrated_gradients"):
        with pytest.raises(DataError, match="PyTorch weights"):
            onnx.explain(["a good film"], method=method)
    text = "the film was long and awful"
    assert onnx.explain([text]) == onnx.explain([text], method="occlusion")  # ONNX Runtime: occlusion
    torch_model = TextClassifier.load(tiny_artifact)
    assert torch_model.explain([text]) == torch_model.explain([text], method="gradient")
    assert torch_model.explain([text]) != torch_model.explain([text], method="occlusion")
    with pytest.raises(DataError, match="not known"):
        onnx.explain(["a good film"], method="shap")


# ------------------------------------------------------------------------------------ on the endpoint


def test_the_endpoint_explains_on_request_and_only_then(onnx: Predictor) -> None:
    from starlette.testclient import TestClient

    from textfit.serving.server import ServeSettings, create_app

    texts = ["the film was long and awful", "Line one 😀\nnaïve café — good!"]
    expected = onnx.explain(texts)
    with TestClient(create_app(onnx, ServeSettings(max_wait_ms=0))) as c:
        def post(body: str, accept: str, content_type: str = "application/json") -> Any:
            return c.post("/invocations", content=body.encode(), headers={"Content-Type": content_type,
                                                                         "Accept": accept})

        answer = post(json.dumps(texts), "application/json;verbose;explain")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
        for got, want in zip(answer.json(), expected):
            assert got["predicted_label"] == want["predicted_label"]
            assert [w["word"] for w in got["explanation"]] == [w["word"] for w in want["explanation"]]
            np.testing.assert_allclose([w["score"] for w in got["explanation"]],
                                       [w["score"] for w in want["explanation"]], atol=1e-4)
        one = post(texts[0], "application/json;explain", "application/x-text").json()  # explain implies verbose
        assert one["labels"] == ["0", "1"] and one["explanation"][-1]["word"] == "awful"
        lines = post("\n".join(json.dumps(t) for t in texts), "application/jsonlines;verbose;explain",
                     "application/jsonlines").text.splitlines()
        assert [json.loads(line)["explanation"] for line in lines] == [r["explanation"] for r in answer.json()]
        plain = post(json.dumps(texts), "application/json;verbose").json()
        assert all("explanation" not in r for r in plain)
        np.testing.assert_allclose([r["probabilities"] for r in plain], onnx.predict_proba(texts), atol=1e-6)
        refused = post(json.dumps(texts), "text/csv;explain")
        assert refused.status_code == 406 and "explain" in refused.json()["error"]
        empty = post(json.dumps(["good", " "]), "application/json;explain")
        assert empty.status_code == 400 and "text 2" in empty.json()["error"]


def test_the_endpoint_bounds_an_explanation(onnx: Predictor) -> None:
    from starlette.testclient import TestClient

    from textfit.serving.server import ServeSettings, create_app

    text = " ".join(["good", "film"] * 20)  # 40 words
    settings = ServeSettings(max_wait_ms=0, max_batch=4, explain_max_words=5, explain_max_chars=len(text) * 6)
    with TestClient(create_app(onnx, settings)) as c:
        answer = c.post("/invocations", content=text.encode(), headers={"Accept": "application/json;explain"})
        assert answer.status_code == 200
        scores = [w["score"] for w in answer.json()["explanation"]]
        assert len(scores) == 40 and len(set(scores)) <= 5  # 5 groups of 8 words
        metrics = c.get("/metrics").text
        assert float(metrics.split("textfit_batch_texts_sum ")[1].split()[0]) == 6  # the text and 5 variants
        assert float(metrics.split('textfit_batch_texts_bucket{le="4.0"} ')[1].split()[0]) == 2  # 4 and 2
        two = c.post("/invocations", content=json.dumps([text, text]).encode(),
                     headers={"Content-Type": "application/json", "Accept": "application/json;explain"})
        assert two.status_code == 413 and "characters" in two.json()["error"]
        assert c.post("/invocations", content=text.encode()).status_code == 200  # and it keeps serving


def test_explained_and_plain_requests_together_on_pytorch(tiny_artifact: Path) -> None:
    """Explained and plain requests at once, on the PyTorch back end (its default method is a gradient, but the
    endpoint's is occlusion, through the queue): each gets its own answer, and the prediction in it."""
    import concurrent.futures

    from starlette.testclient import TestClient

    from textfit.serving.server import ServeSettings, create_app

    clf = TextClassifier.load(tiny_artifact)
    texts = [" ".join(["good", "film", "awful", "plot"][i % 4:] + ["the"] * (i % 7)) for i in range(48)]
    with TestClient(create_app(clf, ServeSettings(max_wait_ms=1))) as c:
        def send(i: int) -> tuple[int, Any]:
            accept = "application/json;explain" if i % 2 else "application/json;verbose"
            answer = c.post("/invocations", content=texts[i].encode(), headers={"Accept": accept})
            return answer.status_code, answer.json()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(len(texts))))
    assert [status for status, _ in answers] == [200] * len(texts)
    for i, (_, body) in enumerate(answers):
        assert ("explanation" in body) == bool(i % 2)
        np.testing.assert_allclose(body["probabilities"], clf.predict_proba([texts[i]])[0], atol=1e-5)
