"""Every entry point a user runs reports an expected failure in one line.

Run the way a user runs them (``make`` targets, ``python -m``), without AWS
credentials where that is the case: non-zero exit, no traceback, and the
line naming the problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NO_CREDENTIALS = "error: no AWS credentials found: set AWS_PROFILE"
BAD_STAGE = "error: stages: 'foo' is not allowed — a comma-separated list of dev, staging, prod"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CDK_DEFAULT_", "MAKE", "MFLAGS"))}
    env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
               AWS_EC2_METADATA_DISABLED="true")
    return env


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def _assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(expected), output


@pytest.mark.parametrize("target", ["synth", "cost"])
def test_make_with_an_unknown_stage_prints_one_line(target):
    _assert_one_line(_run("make", "--no-print-directory", target, "STAGES=foo"), BAD_STAGE)


def test_make_diff_base_with_an_unknown_stage_prints_one_line():
    _assert_one_line(_run("make", "--no-print-directory", "diff", "BASE=HEAD", "STAGES=foo"),
                     BAD_STAGE)


@pytest.mark.parametrize("target", ["deploy", "diff", "bootstrap", "destroy", "drift"])
def test_make_without_credentials_prints_one_line(target):
    _assert_one_line(_run("make", "--no-print-directory", target, "STAGE=dev"), NO_CREDENTIALS)


@pytest.mark.parametrize("target", ["deploy", "drift"])
def test_make_with_an_unknown_stage_names_it(target):
    _assert_one_line(_run("make", "--no-print-directory", target, "STAGE=foo"), BAD_STAGE)


def test_app_with_an_unknown_stage_prints_one_line():
    env = _env()
    env["CDK_CONTEXT_JSON"] = '{"stages": "foo"}'  # how the CDK CLI passes -c stages=foo
    result = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    _assert_one_line(result, BAD_STAGE)


@pytest.mark.slow
@pytest.mark.gate("pinned CDK CLI")
def test_pinned_cli_synth_with_an_unknown_stage_shows_no_traceback(tmp_path):
    cli = ROOT / "node_modules" / ".bin" / "cdk"
    env = _env()
    env["PATH"] = os.pathsep.join([str(cli.parent), str(Path(sys.executable).parent), env["PATH"]])
    result = subprocess.run([str(cli), "--no-notices", "synth", "--quiet", "-c", "stages=foo",
                             "-o", str(tmp_path / "cdk.out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    _assert_one_line(result, BAD_STAGE)


def test_stage_check_rejects_credentials_for_another_account(monkeypatch):
    from delivery import stage_check
    from delivery.cli_errors import UserError

    config = stage_check.stage_config("dev", account="111122223333")
    with pytest.raises(UserError, match="credentials are for 444455556666, stage dev is pinned "
                                        "to 111122223333"):
        stage_check.check_account(config, "444455556666")
    stage_check.check_account(config, "111122223333")


@pytest.mark.parametrize(("stage", "expected"), [
    ("dev", NO_CREDENTIALS),
    ("foo", "error: stages: 'foo' is not allowed"),
])
def test_refresh_models_prints_one_line(stage, expected):
    _assert_one_line(_run(sys.executable, "-m", "delivery.refresh_models", "--stage", stage), expected)
