"""``python -m ml_runs`` as a user runs it: one line and a non-zero status for
every expected failure, never a traceback, and no AWS call before the spec
is valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_command(*argv: str, tmp_path: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(home / "none"), AWS_SHARED_CREDENTIALS_FILE=str(home / "none"))
    return subprocess.run([sys.executable, "-m", "ml_runs", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line(result: subprocess.CompletedProcess, expected_start: str) -> None:
    assert result.returncode == 1, result
    assert result.stderr.startswith(f"error: {expected_start}"), result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_without_credentials_a_command_is_one_line(tmp_path) -> None:
    assert_one_line(run_command("--stage", "dev", "list", tmp_path=tmp_path), "no AWS credentials found")


def test_a_valid_spec_without_credentials_fails_on_credentials(tmp_path) -> None:
    spec = ROOT / "examples" / "runs" / "example-trainer.json"
    assert_one_line(run_command("--stage", "dev", "submit", str(spec), tmp_path=tmp_path),
                    "no AWS credentials found")


@pytest.mark.parametrize(("content", "suffix", "expected"), [
    ('{"name": "x", "image": "trainer:1", "gpus": 99}', ".json", "spec.gpus: 99 is not allowed — 1 to "),
    ('{"name": "x", "image": ', ".json", "{path}: not valid JSON at line 1"),
    ("name: [", ".yaml", "{path}: not valid YAML at line 1"),
])
def test_a_bad_spec_is_one_line_before_any_aws_call(tmp_path, content, suffix, expected) -> None:
    path = tmp_path / f"spec{suffix}"
    path.write_text(content)
    assert_one_line(run_command("--stage", "dev", "submit", str(path), tmp_path=tmp_path),
                    expected.format(path=path))


def test_a_missing_spec_file_is_one_line(tmp_path) -> None:
    missing = tmp_path / "missing.json"
    assert_one_line(run_command("--stage", "dev", "submit", str(missing), tmp_path=tmp_path),
                    f"{missing}: no such file")


def test_an_unknown_stage_is_a_usage_error(tmp_path) -> None:
    result = run_command("--stage", "qa", "list", tmp_path=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'qa'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_does_not_load_the_cdk(tmp_path) -> None:
    code = ("import sys, ml_runs.cli; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('aws_cdk', 'jsii'))))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout) == []
