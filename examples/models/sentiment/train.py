"""Train the example sentiment classifier and write ``model.json``.

``python examples/models/sentiment/train.py`` regenerates the committed
``model.json`` exactly: the corpus is below, the features are the words a
review contains, and the model is a softmax regression fitted by full-batch
gradient descent with fixed hyperparameters (no randomness anywhere).
A test re-runs this and compares with the committed file.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

CLASSES = ("negative", "positive")
TOKEN_RE = re.compile(r"[a-z']+")
EPOCHS = 400
LEARNING_RATE = 0.5
L2 = 0.001
DECIMALS = 4

# (review, class): short product and service reviews written for this example.
CORPUS: tuple[tuple[str, str], ...] = (
    ("great product, works perfectly", "positive"),
    ("the support team was friendly and fast", "positive"),
    ("excellent quality and fast delivery", "positive"),
    ("i love it, highly recommend", "positive"),
    ("very happy with this purchase", "positive"),
    ("works great and the setup was easy", "positive"),
    ("fantastic service, thank you", "positive"),
    ("good value, would buy again", "positive"),
    ("the app is reliable and fast", "positive"),
    ("amazing experience from start to finish", "positive"),
    ("helpful staff and a smooth checkout", "positive"),
    ("best purchase this year", "positive"),
    ("terrible product, broke after one day", "negative"),
    ("the support team was rude and slow", "negative"),
    ("awful quality and late delivery", "negative"),
    ("i hate it, do not buy", "negative"),
    ("very disappointed with this purchase", "negative"),
    ("keeps crashing and the setup was painful", "negative"),
    ("horrible service, never again", "negative"),
    ("poor value, waste of money", "negative"),
    ("the app is buggy and slow", "negative"),
    ("terrible experience, the app keeps crashing", "negative"),
    ("unhelpful staff and a broken checkout", "negative"),
    ("worst purchase this year", "negative"),
)


def tokens(text: str) -> set[str]:
    return set(TOKEN_RE.findall(text.lower()))


def train(corpus=CORPUS) -> dict:
    vocabulary = sorted(set().union(*(tokens(text) for text, _ in corpus)))
    index = {word: i for i, word in enumerate(vocabulary)}
    rows = [([index[w] for w in sorted(tokens(text))], CLASSES.index(label)) for text, label in corpus]
    weights = [[0.0] * len(vocabulary) for _ in CLASSES]
    bias = [0.0] * len(CLASSES)
    for _ in range(EPOCHS):
        grad_w = [[L2 * w for w in row] for row in weights]
        grad_b = [0.0] * len(CLASSES)
        for features, label in rows:
            logits = [bias[c] + sum(weights[c][i] for i in features) for c in range(len(CLASSES))]
            top = max(logits)
            exps = [math.exp(z - top) for z in logits]
            total = sum(exps)
            for c in range(len(CLASSES)):
                error = (exps[c] / total - (1.0 if c == label else 0.0)) / len(rows)
                grad_b[c] += error
                for i in features:
                    grad_w[c][i] += error
        for c in range(len(CLASSES)):
            bias[c] -= LEARNING_RATE * grad_b[c]
            weights[c] = [w - LEARNING_RATE * g for w, g in zip(weights[c], grad_w[c])]
    return {
        "classes": list(CLASSES),
        "token_pattern": TOKEN_RE.pattern,
        "bias": [round(b, DECIMALS) for b in bias],
        "weights": {word: [round(weights[c][i], DECIMALS) for c in range(len(CLASSES))]
                    for word, i in index.items()},
    }


def render(model: dict) -> str:
    """JSON with one word per line, so a retrained model is a readable diff."""
    words = ",\n".join(f"  {json.dumps(word)}: {json.dumps(scores)}"
                        for word, scores in sorted(model["weights"].items()))
    return ("{\n"
            f' "classes": {json.dumps(model["classes"])},\n'
            f' "token_pattern": {json.dumps(model["token_pattern"])},\n'
            f' "bias": {json.dumps(model["bias"])},\n'
            f' "weights": {{\n{words}\n }}\n'
            "}\n")


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "model.json"
    out.write_text(render(train()), encoding="utf-8")
    sys.stdout.write(f"wrote {out}\n")
