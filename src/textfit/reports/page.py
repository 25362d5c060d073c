"""`evaluate --explain N`'s page: texts with their words shaded by attribution, one self-contained HTML file.

No script, no font, no image, nothing fetched: the page reads the same from a laptop, an archive or a locked-down
browser. Green pushes toward the label of the row, red away from it, the colour's strength the word's score over
the largest of that row's scores; every word's score is in its tooltip.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #1b1b1b; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.item { border: 1px solid #ddd; border-radius: 6px; padding: .7em 1em; margin: 1em 0; }
.meta { color: #444; font-size: .9em; margin-bottom: .4em; }
.meta b { color: #000; } .wrong { color: #b00020; } .right { color: #006b2e; }
.row { margin: .3em 0; } .caption { font-size: .85em; color: #555; }
.text { white-space: pre-wrap; word-wrap: break-word; }
.w { border-radius: 3px; padding: 0 1px; }
.probs { font-size: .85em; color: #333; }
.legend span { padding: 0 .4em; border-radius: 3px; }
"""


@dataclass
class Row:
    """One shading of a text: for which label, and its words' attributions (explain.py's records)."""

    caption: str
    words: list[dict[str, Any]]


@dataclass
class Item:
    text: str
    given: str
    predicted: str
    correct: bool
    probabilities: dict[str, float]
    rows: list[Row] = field(default_factory=list)


def _colour(score: float, scale: float) -> str:
    strength = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    rgb = "0, 150, 60" if score > 0 else "210, 30, 45"
    return f"rgba({rgb}, {0.08 + 0.62 * strength:.3f})" if strength > 0.01 else "transparent"


def shaded(text: str, words: Sequence[dict[str, Any]]) -> str:
    """The text as HTML, each explained word in a span coloured by its score (the rest of the text as it is)."""
    scale = max((abs(w["score"]) for w in words), default=0.0)
    out, at = [], 0
    for w in sorted(words, key=lambda w: w["start"]):
        if w["start"] < at:  # overlapping spans cannot come from explain.py; kept safe all the same
            continue
        out.append(html.escape(text[at:w["start"]]))
        out.append(f'<span class="w" style="background: {_colour(w["score"], scale)}" '
                   f'title="{w["score"]:+.4f}">{html.escape(text[w["start"]:w["end"]])}</span>')
        at = w["end"]
    out.append(html.escape(text[at:]))
    return "".join(out)


def _item(item: Item) -> str:
    verdict = '<span class="right">correct</span>' if item.correct else '<span class="wrong">wrong</span>'
    top = sorted(item.probabilities.items(), key=lambda kv: -kv[1])[:5]
    probs = ", ".join(f"{html.escape(label)} {p:.3f}" for label, p in top)
    rows = "".join(f'<div class="row"><div class="caption">{html.escape(row.caption)}</div>'
                   f'<div class="text">{shaded(item.text, row.words)}</div></div>' for row in item.rows)
    return (f'<div class="item"><div class="meta">{verdict} · given <b>{html.escape(item.given)}</b> · '
            f'predicted <b>{html.escape(item.predicted)}</b></div><div class="probs">{probs}</div>{rows}</div>')


def render(title: str, sections: Sequence[tuple[str, Sequence[Item]]], note: str = "") -> str:
    """The whole page: a title, a legend and each (heading, items) section."""
    body = "".join(f"<h2>{html.escape(heading)} ({len(items)})</h2>" + "".join(_item(i) for i in items)
                   + ("" if items else "<p>None.</p>") for heading, items in sections)
    legend = ('<p class="legend">Word shading: <span style="background: rgba(0, 150, 60, .6)">toward the '
              'label</span> <span style="background: rgba(210, 30, 45, .6)">away from it</span>; hover a word for '
              f"its score. {html.escape(note)}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{legend}{body}</body></html>\n")
