"""batching's tokenizer calls from several threads at once, as the server's batches in flight make them."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from textfit.data import batching
from textfit.model import zoo
from textfit.model.export import GraphTokenizer


def test_tokenizing_from_threads_at_once_gives_each_call_its_own_settings() -> None:
    """The ONNX server's tokenizer sets its truncation before each call, and a fast tokenizer may not be entered
    twice at once: calls at different lengths, head and tail, from four threads give what they give alone."""
    tokenizer = GraphTokenizer(Path(zoo.resolve_model(None).path))
    texts = [" ".join(f"word{i} of text {k}" for i in range(300)) for k in range(8)]
    calls = [(length, head_tail) for length in (16, 64, 128) for head_tail in (False, True)] * 12
    alone = {call: batching.encode(tokenizer, texts, call[0], head_tail=call[1]).input_ids for call in set(calls)}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda call: batching.encode(tokenizer, texts, call[0], head_tail=call[1]).input_ids,
                                 calls))
    assert [alone[call] for call in calls] == together
    assert {len(rows[0]) for rows, (_, head_tail) in zip(together, calls) if not head_tail} == {16, 64, 128}
