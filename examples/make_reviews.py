"""Write examples/reviews/data.csv: short review sentences of textfit's own, labelled 0 (negative) or 1 (positive).

Run `python examples/make_reviews.py` to regenerate; the output is deterministic.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SUBJECTS = [
    "the film", "this movie", "the new phone", "our hotel room", "the pasta", "the service", "this laptop",
    "the concert", "the delivery", "the staff", "the battery", "the soundtrack", "the ending", "the coffee",
    "the app", "the museum tour", "the headphones", "the checkout process", "the sequel", "the recipe book",
    "the train journey", "the customer support", "the camera", "the game", "the novel", "the haircut",
]
POSITIVE = [
    "was absolutely wonderful", "exceeded every expectation", "made my whole week", "was a real delight",
    "worked perfectly from day one", "left us smiling", "is the best I have tried", "felt warm and friendly",
    "was fast, clean and reliable", "deserves every bit of praise", "was beautifully done", "impressed the whole family",
    "was worth every penny", "turned out better than hoped", "was charming and clever", "was a joy to use",
]
NEGATIVE = [
    "was a complete waste of money", "broke after two days", "left me bored and annoyed", "was cold and rude",
    "was slow, dirty and unreliable", "ruined the whole evening", "is the worst I have tried", "felt cheap and flimsy",
    "never worked properly", "deserves no praise at all", "was badly done", "disappointed the whole family",
    "was not worth the price", "turned out far worse than feared", "was dull and clumsy", "was a pain to use",
]
OPENERS = ["", "Honestly, ", "To be fair, ", "Well, ", "In short, ", "Sadly or not, ", "After a week, "]
CLOSERS = [".", "!", ", I must say.", ", and that is that.", " this time.", ", as expected."]


def rows(n: int, seed: int = 7) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    out = set()
    while len(out) < n:
        label = len(out) % 2
        phrase = rng.choice(POSITIVE if label else NEGATIVE)
        text = f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {phrase}{rng.choice(CLOSERS)}"
        out.add((label, text[0].upper() + text[1:]))
    result = sorted(out)
    rng.shuffle(result)
    return result


if __name__ == "__main__":
    target = Path(__file__).parent / "reviews" / "data.csv"
    with target.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows(400))
    print(f"wrote {target}")
