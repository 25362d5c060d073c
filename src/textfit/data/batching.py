"""Texts to padded batches: tokenize once, group rows of similar length, pad each batch to its longest.

Padding every batch to max_seq_length wastes most of the compute on short texts; grouping by length (as the
Trainer's `group_by_length` does) keeps batches dense while the order of batches stays random. A batch is padded
into numpy int64 arrays, what ONNX Runtime takes; training and the PyTorch forward pass view them as tensors, so
that predicting with ONNX Runtime never imports torch.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from textfit.errors import DataError

if TYPE_CHECKING:
    import torch

# Rows are sorted by length within windows of this many batches, so batches stay random across windows.
BUCKET_WINDOW = 50
# Only the first max_length tokens of a text count, so a text is cut to this many characters per token before it
# is tokenized: a 6 MB text then costs what a page does. Where that leaves the window short (long runs of
# whitespace or of symbols that make no tokens), the cut grows by CLIP_GROWTH, up to MAX_CHARS_PER_TOKEN.
CHARS_PER_TOKEN = 16
CLIP_GROWTH = 8
MAX_CHARS_PER_TOKEN = 1024
# A text read as windows counts its first MAX_WINDOWS windows (about 6,000 tokens at 128 a window: BBC News's
# longest article has 4,300), cut first to what they can hold at CHARS_PER_TOKEN: a 6 MB request then costs what
# a long report does, not 15,000 windows.
MAX_WINDOWS = 64
# Head + tail: a text longer than max_length read as the first HEAD_SHARE of the tokens that fit and its last
# tokens for the rest (Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": 128 + 382 of 510
# tokens read long reviews and news better than the first or the last 510 alone).
HEAD_SHARE = 0.25
# A tail starts at a word's start where a space comes within this many characters (else where it falls).
WORD_SKIP = 64


# A tokenizer is not safe to call from two threads at once: a fast one raises "Already borrowed", or (settings
# are per tokenizer, set before each call) one thread's call runs at the other's max_length. The server computes
# batches on several threads; tokenizing is a small part of a batch's time, so one lock serves every tokenizer.
_TOKENIZING = threading.Lock()


@dataclass(frozen=True)
class Encoded:
    """Token ids of each text (unpadded) and, for training data, class indices."""

    input_ids: list[list[int]]
    labels: list[Any] | None
    pad_id: int
    has_token_types: bool
    owners: list[int] | None = None
    """With windows: the text each row (window) belongs to."""
    truncated: int = 0
    """Texts longer than max_length tokens, cut to their first max_length (or read as head and tail)."""
    n_labels: int = 0
    """Multi-label data: the number of labels, and `labels` holds a list of label indices per row."""

    def label_tensor(self, rows: Sequence[int]) -> torch.Tensor:
        """Class indices (long), or for multi-label data a 0/1 matrix (rows x labels, float)."""
        import torch

        assert self.labels is not None
        if not self.n_labels:
            return torch.tensor([self.labels[r] for r in rows], dtype=torch.long)
        out = torch.zeros((len(rows), self.n_labels), dtype=torch.float32)
        for i, r in enumerate(rows):
            out[i, self.labels[r]] = 1.0
        return out

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Batch:
    rows: list[int]
    """Positions of this batch's rows in the Encoded set."""
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None

    def to(self, device: torch.device) -> Batch:
        if device.type == "cpu":
            return self
        inputs = {k: v.to(device, non_blocking=True) for k, v in self.inputs.items()}
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return Batch(self.rows, inputs, labels)


def check_texts(texts: Sequence[object]) -> list[str]:
    """The texts as a list of strings; DataError names the first that is not a string.

    What is in a string is checked once, by the tokenizer reading it: a text it cannot read (a lone surrogate,
    from a JSON escape or undecodable bytes in argv) makes `encode` name it (`_unreadable`), and the server
    checks each request's texts before they join a batch (inference.decode_request). Encoding every text here
    only to look for one would copy every text once more.
    """
    if isinstance(texts, str):
        raise DataError("expected a list of texts, not a single string; wrap it: [text]")
    out: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"text {i + 1} is a {type(text).__name__}, not a string; pass texts as str")
        out.append(text)
    return out


def _unreadable(texts: list[str]) -> DataError | None:
    """The first text that is no valid Unicode, named; None if every text is."""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return DataError(f"text {i + 1} holds an invalid Unicode character (U+{ord(text[exc.start]):04X} at "
                             f"position {exc.start}); pass valid UTF-8 text")
    return None


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, labels: Sequence[Any] | None = None,
           window_overlap: int | None = None, token_types: bool | None = None, n_labels: int = 0,
           count_truncated: bool = True, head_tail: bool = False) -> Encoded:
    """Tokenize all texts in one call (the fast tokenizer parallelises it), truncated to max_length tokens.

    With `window_overlap`, a text longer than max_length becomes several overlapping windows instead (at most
    MAX_WINDOWS), each `window_overlap` tokens into the previous one; `owners` maps windows back to texts.
    `token_types`: whether the model takes token_type_ids (default: whether the tokenizer makes them).
    `count_truncated`: count the texts longer than max_length (one more tokenization of the full rows; a
    server answering requests has no use for the count, so it skips it).
    `head_tail`: a text longer than max_length becomes its first and last tokens (HEAD_SHARE) instead.
    """
    texts = check_texts(texts)
    try:
        with _TOKENIZING:
            return _encode(tokenizer, texts, max_length, labels, window_overlap, token_types, n_labels,
                           count_truncated or head_tail, head_tail)
    except TypeError:  # what a fast tokenizer raises for a string that is no valid Unicode
        unreadable = _unreadable(texts)
        if unreadable is None:
            raise
        raise unreadable from None


def _encode(tokenizer: Any, texts: list[str], max_length: int, labels: Sequence[Any] | None,
            window_overlap: int | None, token_types: bool | None, n_labels: int, count_truncated: bool,
            head_tail: bool) -> Encoded:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    has_types = "token_type_ids" in tokenizer.model_input_names if token_types is None else token_types
    if window_overlap is None:
        ids, longer = _tokenize_window(tokenizer, texts, max_length, count_truncated)
        if head_tail and longer:
            specials = _specials(tokenizer, max_length)
            for i in longer:
                ids[i] = _with_tail(tokenizer, ids[i], texts[i], specials)
        return Encoded(ids, None if labels is None else list(labels), pad_id, has_types, truncated=len(longer),
                       n_labels=n_labels)
    budget = max_length * MAX_WINDOWS * CHARS_PER_TOKEN
    enc = tokenizer([t[:budget] for t in texts], truncation=True, max_length=max_length, stride=window_overlap,
                    padding=False, return_overflowing_tokens=True)
    ids = []
    owners: list[int] = []
    for row, owner in zip(enc["input_ids"], enc["overflow_to_sample_mapping"]):
        if len(owners) < MAX_WINDOWS or owners[-MAX_WINDOWS] != owner:  # a text's windows come in a row
            ids.append(row)
            owners.append(owner)
    return Encoded(ids, None, pad_id, has_types, owners)


def reads(max_length: int, windows: bool) -> int:
    """The characters of a text the model can read at most: beyond them no tokenization looks."""
    return max_length * (MAX_WINDOWS * CHARS_PER_TOKEN if windows else MAX_CHARS_PER_TOKEN)


def spans(tokenizer: Any, texts: Sequence[str], max_length: int, window_overlap: int | None = None,
          head_tail: bool = False) -> list[list[tuple[list[int], list[tuple[int, int]], list[bool]]]] | None:
    """Each text's tokens as the model reads them (its first max_length, with `head_tail` a longer text's head
    and tail, or with `window_overlap` each of its windows): (ids, character spans into the text, special-token
    flags) a window; None for a tokenizer that cannot say where its tokens are (one with no fast version)."""
    with _TOKENIZING:
        return _spans(tokenizer, texts, max_length, window_overlap, head_tail)


def _spans(tokenizer: Any, texts: Sequence[str], max_length: int, window_overlap: int | None, head_tail: bool
           ) -> list[list[tuple[list[int], list[tuple[int, int]], list[bool]]]] | None:
    windows = window_overlap is not None
    cut = [t[:reads(max_length, windows)] for t in texts]
    try:
        enc = tokenizer(cut, truncation=True, max_length=max_length, padding=False, stride=window_overlap or 0,
                        return_overflowing_tokens=windows, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    except NotImplementedError:  # transformers' Python tokenizers may refuse offsets, or leave them out
        return None
    if "offset_mapping" not in enc:
        return None
    owners = enc["overflow_to_sample_mapping"] if windows else range(len(texts))
    out: list[list[tuple[list[int], list[tuple[int, int]], list[bool]]]] = [[] for _ in texts]
    for ids, offsets, special, owner in zip(enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"],
                                            owners):
        if len(out[owner]) < MAX_WINDOWS:
            out[owner].append((list(ids), [tuple(o) for o in offsets], [bool(s) for s in special]))
    if head_tail:
        for i in _longer(tokenizer, [parts[0][0] for parts in out], cut, max_length):
            ids, offsets, special = out[i][0]
            own = [k for k, s in enumerate(special) if not s]
            before, after = own[0], len(ids) - own[-1] - 1
            head, tail = head_tail_split(before, after, len(ids))
            tail_ids, tail_spans = _tail(tokenizer, texts[i], tail)  # the text's own end, as encode reads it
            out[i] = [(_splice(ids, before + head, after, tail_ids), _splice(offsets, before + head, after, tail_spans),
                       _splice(special, before + head, after, [False] * len(tail_ids)))]
    return out


def _tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    return list(tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"])


def _tokenize_window(tokenizer: Any, texts: list[str], max_length: int, count: bool = True
                     ) -> tuple[list[list[int]], list[int]]:
    """The first max_length tokens of each text, tokenizing a bounded prefix; and (with `count`) which texts
    were longer."""
    budget = max_length * CHARS_PER_TOKEN
    ids = _tokenize(tokenizer, [t[:budget] for t in texts], max_length)
    while budget < max_length * MAX_CHARS_PER_TOKEN:
        short = [i for i, t in enumerate(texts) if len(t) > budget and len(ids[i]) < max_length]
        if not short:
            break
        budget *= CLIP_GROWTH
        for i, row in zip(short, _tokenize(tokenizer, [texts[i][:budget] for i in short], max_length)):
            ids[i] = row
    if not count:
        return ids, []
    return ids, _longer(tokenizer, ids, texts, max_length, budget)


def _longer(tokenizer: Any, rows: list[list[int]], texts: Sequence[str], max_length: int,
            limit: int | None = None) -> list[int]:
    """Which texts are longer than max_length tokens, given their first rows (of the texts' first `limit`
    characters): a full row may be a text of exactly max_length tokens, and one token more tells them apart."""
    full = [i for i, row in enumerate(rows) if len(row) >= max_length]
    longer = _tokenize(tokenizer, [texts[i][:limit] for i in full], max_length + 1) if full else []
    return [i for i, row in zip(full, longer) if len(row) > max_length]


def _splice(row: list[Any], keep: int, after: int, middle: list[Any]) -> list[Any]:
    """A row's first `keep` items, then `middle`, then its last `after` items (its closing special tokens)."""
    return row[:keep] + middle + row[len(row) - after:]


def _specials(tokenizer: Any, max_length: int) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after a text's own: ([CLS], [SEP]) is (1, 1), XLNet's
    (0, 2). Read from a one-word text, through the call both of textfit's tokenizers take."""
    mask = list(tokenizer(["a"], truncation=True, max_length=max_length, return_special_tokens_mask=True
                          )["special_tokens_mask"][0])
    own = [i for i, s in enumerate(mask) if not s]
    return (own[0], len(mask) - own[-1] - 1) if own else (len(mask), 0)


def _tail(tokenizer: Any, text: str, n: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The last `n` tokens of a text and their character spans in it, tokenizing a bounded suffix that grows as
    _tokenize_window's prefix does. The suffix starts at a space (the first word then tokenizes as after a space
    in the text, which byte-level BPE and SentencePiece mark), and where n tokens would start inside a word, at
    the next space within WORD_SKIP characters (a text without spaces, such as Chinese, keeps its last n)."""
    budget = max(n, 1) * CHARS_PER_TOKEN
    while True:
        start = max(0, len(text) - budget)
        cut = start > 0 and not text[start - 1].isspace()
        if cut and (space := _next_space(text, start)) is not None:
            start, cut = space, False
        ids, spans = _tokens(tokenizer, text[start:])
        spans = [(a + start, b + start) for a, b in spans]
        if start == 0 or len(ids) > n or budget >= n * MAX_CHARS_PER_TOKEN:
            first = len(ids) - min(n, len(ids) - cut)
            at = spans[first][0] if spans and 0 < first < len(ids) - 1 else 0
            # Inside a word, the next space from the next token's start less one: the same character whichever
            # way a tokenizer reports the offset of a token that is a space mark alone (the space's, or the next
            # character's).
            inside = at > 0 and not (text[at - 1].isspace() or text[at].isspace())
            if inside and (space := _next_space(text, spans[first + 1][0] - 1)) is not None:
                ids, spans = _tokens(tokenizer, text[space:])
                return ids[-n:], [(a + space, b + space) for a, b in spans[-n:]]
            return ids[first:], spans[first:]
        budget *= CLIP_GROWTH


def _tokens(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """A text's own tokens (no special ones) and their character spans ([] from a tokenizer that has none: one
    with no fast version)."""
    # No truncation that could cut the end: the text is bounded by _tail's budget.
    options = {"truncation": True, "max_length": 1 << 30, "return_special_tokens_mask": True}
    try:
        enc = tokenizer([text], **options, return_offsets_mapping=True)
    except NotImplementedError:  # transformers' Python tokenizers may refuse offsets, or leave them out
        enc = tokenizer([text], **options)
    spans = ([tuple(o) for o, s in zip(enc["offset_mapping"][0], enc["special_tokens_mask"][0]) if not s]
             if "offset_mapping" in enc else [])
    return [i for i, s in zip(enc["input_ids"][0], enc["special_tokens_mask"][0]) if not s], spans


def _next_space(text: str, start: int, within: int = WORD_SKIP) -> int | None:
    """The first whitespace at or after `start`, within `within` characters; None if there is none."""
    for i in range(start, min(len(text), start + within)):
        if text[i].isspace():
            return i
    return None


def head_tail_split(before: int, after: int, length: int) -> tuple[int, int]:
    """For a text read as `length` tokens with `before` and `after` special ones: how many of its own tokens
    the head keeps, and how many tail tokens follow."""
    room = length - before - after
    head = int(room * HEAD_SHARE + 0.5)
    return head, room - head


def _with_tail(tokenizer: Any, first: list[int], text: str, specials: tuple[int, int]) -> list[int]:
    """A long text's first max_length tokens remade as head + tail: its first tokens, then its last ones, inside
    the same special tokens."""
    before, after = specials
    head, tail = head_tail_split(before, after, len(first))
    return _splice(first, before + head, after, _tail(tokenizer, text, tail)[0])


def pad(data: Encoded, rows: Sequence[int]) -> dict[str, np.ndarray]:
    """The model's inputs for the given rows, padded to the longest of them: int64 arrays (ONNX Runtime's)."""
    longest = max(len(data.input_ids[r]) for r in rows)
    ids = np.full((len(rows), longest), data.pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, r in enumerate(rows):
        seq = data.input_ids[r]
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    if data.has_token_types:
        inputs["token_type_ids"] = np.zeros_like(ids)
    return inputs


def collate(data: Encoded, rows: list[int]) -> Batch:
    """Pad the given rows to their longest and build the model's inputs, as tensors (views of `pad`'s arrays)."""
    import torch

    inputs = {name: torch.from_numpy(array) for name, array in pad(data, rows).items()}
    return Batch(rows, inputs, None if data.labels is None else data.label_tensor(rows))


def plan_batches(lengths: Sequence[int], batch_size: int, *, shuffle: bool, seed: int = 0,
                 min_size: int = 1) -> list[list[int]]:
    """Row groups of at most batch_size with similar lengths; shuffled (reproducibly) for training.

    `min_size`: no group smaller than this (given that many rows): a group that would be (the last of a
    window, or every group when batch_size is smaller) joins its neighbour before the groups are shuffled, so
    that in a distributed job every worker gets a row in every step.
    """
    order = list(range(len(lengths)))
    if not shuffle:
        order.sort(key=lambda r: lengths[r])
        return _at_least([order[i : i + batch_size] for i in range(0, len(order), batch_size)], min_size)
    rng = random.Random(seed)
    rng.shuffle(order)
    window = batch_size * BUCKET_WINDOW
    groups: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda r: lengths[r])
        groups.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    groups = _at_least(groups, min_size)
    rng.shuffle(groups)
    return groups


def _at_least(groups: list[list[int]], min_size: int) -> list[list[int]]:
    if min_size <= 1:
        return groups
    merged: list[list[int]] = []
    for group in groups:
        if merged and len(merged[-1]) < min_size:
            merged[-1].extend(group)
        else:
            merged.append(list(group))
    if len(merged) > 1 and len(merged[-1]) < min_size:
        merged[-2].extend(merged.pop())
    return merged


def iterate(data: Encoded, batch_size: int, *, shuffle: bool, seed: int = 0) -> Iterator[Batch]:
    lengths = [len(ids) for ids in data.input_ids]
    for rows in plan_batches(lengths, batch_size, shuffle=shuffle, seed=seed):
        yield collate(data, rows)
