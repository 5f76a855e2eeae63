"""The example model dev serves: a real classifier, run the way the container runs it,
and an archive that is reproducible and laid out the way the container expects."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ml_stacks import example_models

NAME = "sentiment"
JSON = "application/json"


def load_handler(path: Path):
    """Import ``code/inference.py`` from ``path`` under a fresh module name."""
    spec = importlib.util.spec_from_file_location(f"inference_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The archive extracted the way SageMaker extracts it to /opt/ml/model."""
    target = tmp_path_factory.mktemp("opt-ml-model")
    with tarfile.open(fileobj=io.BytesIO(example_models.archive_bytes(NAME)), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture(scope="module")
def handler(model_dir):
    return load_handler(model_dir / "code" / "inference.py")


def invoke(handler, model, body, content_type=JSON, accept=JSON):
    data = handler.input_fn(body, content_type)
    return handler.output_fn(handler.predict_fn(data, model), accept)


def test_the_extracted_archive_answers_the_example_payload(handler, model_dir) -> None:
    model = handler.model_fn(str(model_dir))
    payload = example_models.payload_path(NAME).read_text()
    body, content_type = invoke(handler, model, payload)
    assert content_type == JSON
    predictions = json.loads(body)["predictions"]
    texts = json.loads(payload)["inputs"]
    assert len(predictions) == len(texts) == 2
    # "Fast delivery and friendly support, highly recommend" / "Awful app, it keeps crashing ..."
    assert [p["label"] for p in predictions] == ["positive", "negative"]
    for prediction in predictions:
        assert set(prediction["scores"]) == {"negative", "positive"}
        assert sum(prediction["scores"].values()) == pytest.approx(1, abs=1e-3)
        assert prediction["scores"][prediction["label"]] > 0.9


def test_the_repository_copy_of_the_handler_is_the_one_archived(model_dir) -> None:
    source = example_models.example_dir(NAME)
    assert (model_dir / "code" / "inference.py").read_bytes() == (source / "code" / "inference.py").read_bytes()
    assert (model_dir / "model.json").read_bytes() == (source / "model.json").read_bytes()


def test_the_prediction_follows_the_weights(handler, tmp_path) -> None:
    """A word the weights call positive flips a neutral text; no hard-coded answers."""
    model_file = {"classes": ["negative", "positive"], "token_pattern": "[a-z']+", "bias": [0.0, 0.0],
                  "weights": {"splendid": [-2.0, 2.0], "dreadful": [3.0, -3.0]}}
    (tmp_path / "model.json").write_text(json.dumps(model_file))
    model = handler.model_fn(str(tmp_path))
    body, _ = invoke(handler, model, b'{"inputs": ["a splendid day", "dreadful", "nothing known"]}',
                     content_type="application/json; charset=utf-8", accept="*/*")
    predictions = json.loads(body)["predictions"]
    assert [p["label"] for p in predictions] == ["positive", "negative", "negative"]
    assert predictions[0]["scores"]["positive"] == pytest.approx(0.982, abs=1e-3)
    assert predictions[2]["scores"] == {"negative": 0.5, "positive": 0.5}


@pytest.mark.parametrize("body, content_type", [
    ("a,b\n", "text/csv"),
    ('{"inputs": "not a list"}', JSON),
    ('{"inputs": []}', JSON),
    ('["no", "object"]', JSON),
])
def test_input_fn_rejects_requests_it_cannot_read(handler, body, content_type) -> None:
    with pytest.raises(ValueError):
        handler.input_fn(body, content_type)


def test_output_fn_answers_only_in_json(handler) -> None:
    with pytest.raises(ValueError, match="text/csv"):
        handler.output_fn([], "text/csv")


def test_model_fn_rejects_weights_that_do_not_match_the_classes(handler, tmp_path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({
        "classes": ["a", "b"], "token_pattern": "[a-z]+", "bias": [0, 0], "weights": {"x": [1.0]}}))
    with pytest.raises(ValueError, match="one score per class"):
        handler.model_fn(str(tmp_path))


def test_train_py_reproduces_the_committed_weights() -> None:
    train = load_handler(example_models.example_dir(NAME) / "train.py")
    assert train.render(train.train()) == (example_models.example_dir(NAME) / "model.json").read_text()


# --- the archive ----------------------------------------------------------------------

def test_archive_is_byte_identical_across_builds(tmp_path) -> None:
    first = example_models.build_archive(NAME, tmp_path / "a" / "model.tar.gz").read_bytes()
    second = example_models.build_archive(NAME, tmp_path / "b" / "model.tar.gz").read_bytes()
    assert first == second == example_models.archive_bytes(NAME)


def test_archive_has_no_timestamp_name_or_owner_in_it() -> None:
    data = example_models.archive_bytes(NAME)
    assert data[:3] == b"\x1f\x8b\x08"
    assert data[3] & 0x08 == 0  # FNAME flag: no file name stored
    assert data[4:8] == b"\0\0\0\0"  # gzip MTIME
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["code", "code/inference.py", "model.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "root", "root")}
    assert [m.mode for m in members] == [0o755, 0o644, 0o644]


def test_archive_holds_the_model_at_the_root_and_the_handler_in_code_only() -> None:
    """The container extracts to /opt/ml/model and imports /opt/ml/model/code/inference.py;
    the payload and the training script are not part of the model."""
    arcnames = [arcname for arcname, _ in example_models.archive_members(NAME)]
    assert example_models.HANDLER in arcnames
    assert "model.json" in arcnames
    assert not {"payload.json", "train.py"} & set(arcnames)
    assert all(not name.startswith("/") and ".." not in name.split("/") for name in arcnames)


def test_digest_follows_the_files_and_nothing_else(tmp_path, monkeypatch) -> None:
    copy = tmp_path / "models"
    shutil.copytree(example_models.example_dir(NAME), copy / NAME)
    original = example_models.archive_digest(NAME)
    monkeypatch.setattr(example_models, "EXAMPLES_DIR", copy)
    (copy / NAME / "payload.json").write_text('{"inputs": ["changed"]}')
    (copy / NAME / "code" / "__pycache__").mkdir(exist_ok=True)
    (copy / NAME / "code" / "__pycache__" / "inference.cpython-311.pyc").write_bytes(b"\0")
    assert example_models.archive_digest(NAME) == original
    model_file = copy / NAME / "model.json"
    model_file.write_text(model_file.read_text().replace('"bias": [', '"bias": [ '))
    assert example_models.archive_digest(NAME) != original


def test_staged_archive_is_content_addressed_and_reused() -> None:
    first = example_models.staged_archive(NAME)
    assert first.read_bytes() == example_models.archive_bytes(NAME)
    assert first.parent.name == example_models.archive_digest(NAME)
    assert example_models.staged_archive(NAME) == first


def test_fails_when_the_handler_is_missing(tmp_path, monkeypatch) -> None:
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.json").write_text("{}")
    monkeypatch.setattr(example_models, "EXAMPLES_DIR", tmp_path)
    with pytest.raises(FileNotFoundError):
        example_models.tar_bytes("bare")
    assert example_models.available() == ()


def test_build_command_writes_the_same_archive(tmp_path, capsys) -> None:
    out = tmp_path / "model.tar.gz"
    assert example_models.main(["build", NAME, "--out", str(out)]) == 0
    assert out.read_bytes() == example_models.archive_bytes(NAME)
    assert example_models.archive_digest(NAME) in capsys.readouterr().out


def test_build_command_reports_an_unknown_model_in_one_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ml_stacks.example_models", "build", "nope", "--out", str(tmp_path / "m")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice: 'nope'" in result.stderr
