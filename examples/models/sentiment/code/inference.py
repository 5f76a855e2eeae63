"""Inference handler of the example sentiment classifier.

The SageMaker PyTorch inference container (sagemaker-pytorch-inference-toolkit
on TorchServe) imports ``/opt/ml/model/code/inference.py`` (the default
``SAGEMAKER_PROGRAM``) and calls, per request::

    model = model_fn(model_dir)                  # once, model_dir = /opt/ml/model
    data = input_fn(request_body, content_type)  # body is a str for application/json
    prediction = predict_fn(data, model)
    body, content_type = output_fn(prediction, accept)

The model is a softmax regression over the words of a review (weights in
``model.json`` next to ``code/``, trained by ``train.py``). Only the standard
library is used: the endpoint runs with network isolation, so nothing can be
installed at start-up, and the same archive serves on the CPU and GPU images.

Request::

    {"inputs": ["fast delivery, highly recommend", "it keeps crashing"]}

Response::

    {"predictions": [{"label": "positive", "scores": {"negative": 0.02, "positive": 0.98}}, ...]}
"""

from __future__ import annotations

import json
import math
import os
import re

MODEL_FILE = "model.json"
JSON = "application/json"
MAX_INPUTS = 64


def model_fn(model_dir):
    """Load ``model.json`` from the extracted model archive."""
    with open(os.path.join(model_dir, MODEL_FILE), encoding="utf-8") as source:
        model = json.load(source)
    classes = model["classes"]
    if len(model["bias"]) != len(classes) or any(
            len(scores) != len(classes) for scores in model["weights"].values()):
        raise ValueError(f"{MODEL_FILE}: every weight vector needs one score per class {classes}")
    model["token_re"] = re.compile(model["token_pattern"])
    return model


def input_fn(input_data, content_type):
    """``{"inputs": [text, ...]}`` as JSON -> the list of texts."""
    if (content_type or "").split(";")[0].strip().lower() != JSON:
        raise ValueError(f"content type {content_type!r} is not supported: send {JSON}")
    if isinstance(input_data, (bytes, bytearray)):
        input_data = input_data.decode("utf-8")
    body = json.loads(input_data)
    texts = body.get("inputs") if isinstance(body, dict) else None
    if (not isinstance(texts, list) or not 1 <= len(texts) <= MAX_INPUTS
            or not all(isinstance(text, str) for text in texts)):
        raise ValueError(f'expected {{"inputs": [text, ...]}} with 1 to {MAX_INPUTS} strings')
    return texts


def predict_fn(data, model):
    """Class probabilities of each text, and the most likely class."""
    classes, bias, weights = model["classes"], model["bias"], model["weights"]
    zero = [0.0] * len(classes)
    predictions = []
    for text in data:
        words = set(model["token_re"].findall(text.lower()))
        logits = [bias[c] + sum(weights.get(word, zero)[c] for word in words)
                  for c in range(len(classes))]
        top = max(logits)
        exps = [math.exp(logit - top) for logit in logits]
        total = sum(exps)
        scores = {name: round(exps[c] / total, 4) for c, name in enumerate(classes)}
        predictions.append({"label": classes[logits.index(top)], "scores": scores})
    return predictions


def output_fn(prediction, accept):
    """The predictions as JSON (the only type this model answers in)."""
    if (accept or JSON).split(";")[0].strip().lower() not in (JSON, "*/*"):
        raise ValueError(f"accept type {accept!r} is not supported: accept {JSON}")
    return json.dumps({"predictions": prediction}), JSON
