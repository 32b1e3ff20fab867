"""Toy classification records: a learnable sentiment set whose label follows its polar words."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

POSITIVE = ["good", "great", "fine", "lovely", "superb", "wonderful", "moving", "funny"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "terrible", "weak", "tedious"]
FILLER = ["the", "film", "movie", "plot", "is", "was", "very", "really", "acting", "story"]


def sentiment_records(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """A learnable toy sentiment set: the label follows the polar words in the sentence."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        positive = i % 2 == 0
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if positive else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if positive else "negative"})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
