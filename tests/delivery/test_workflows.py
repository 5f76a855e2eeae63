"""GitHub Actions workflows: actionlint clean, and the delivery contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_stacks.app_factory import PROJECT_ROOT

pytestmark = pytest.mark.gate("actionlint")

WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
ACTIONLINT = Path(sys.executable).parent / "actionlint"


def _lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(ACTIONLINT), "-no-color", *map(str, paths)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=False, timeout=120)


def _load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_every_workflow_passes_actionlint() -> None:
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert {p.name for p in workflows} >= {"ci.yml", "pr-diff.yml", "deploy.yml", "deploy-stage.yml", "drift.yml"}
    result = _lint(*workflows)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_really_reports_a_broken_workflow(tmp_path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n"
                      "    steps:\n      - run: echo ${{ github.nonexistent_thing }}\n")
    result = _lint(broken)
    assert result.returncode == 1
    assert "nonexistent_thing" in result.stdout


def test_deploy_runs_dev_then_staging_then_prod_in_their_environments() -> None:
    deploy = _load("deploy.yml")
    jobs = deploy["jobs"]
    assert deploy[True] == {"push": {"branches": ["main"]}, "workflow_dispatch": None}
    assert (jobs["dev"]["needs"], jobs["staging"]["needs"], jobs["prod"]["needs"]) == ("test", "dev", "staging")
    assert [jobs[s]["with"]["stage"] for s in ("dev", "staging", "prod")] == ["dev", "staging", "prod"]
    stage_job = _load("deploy-stage.yml")["jobs"]["deploy"]
    # The environment (required reviewers on prod) gates the job before any step runs.
    assert stage_job["environment"] == "${{ inputs.stage }}"
    steps = stage_job["steps"]
    creds = next(s for s in steps if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@"))
    assert set(creds["with"]) == {"role-to-assume", "role-session-name", "aws-region"}  # OIDC, no keys
    # Preflight ran in the step before, on the same cdk.out (test_preflight_cli.py).
    assert steps[-1]["run"] == 'make deploy STAGE="$STAGE" REQUIRE_APPROVAL=never PREFLIGHT=done'
    assert _load("deploy-stage.yml")["permissions"]["id-token"] == "write"


def test_no_workflow_uses_long_lived_aws_keys() -> None:
    for path in WORKFLOWS.glob("*.yml"):
        text = path.read_text()
        assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text, path.name


def test_pr_diff_comments_the_offline_diff_and_fails_on_a_blocked_replacement() -> None:
    job = _load("pr-diff.yml")["jobs"]["offline-diff"]
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert 'make diff BASE="$(git merge-base "$BASE_REF" HEAD)" REPORT=diff.md' in runs
    comment = next(s for s in job["steps"] if s.get("uses", "").startswith("marocchino/sticky-pull-request-comment@"))
    assert comment["with"] == {"header": "infrastructure-diff", "path": "diff.md"}
    assert job["steps"][-1]["if"] == "steps.diff.outputs.status != '0'"


def test_drift_runs_daily_for_every_stage() -> None:
    drift = _load("drift.yml")
    assert drift[True]["schedule"] == [{"cron": "30 5 * * *"}]
    stages = [m["stage"] for m in drift["jobs"]["drift"]["strategy"]["matrix"]["include"]]
    assert stages == ["dev", "staging", "prod"]
    assert drift["jobs"]["drift"]["steps"][-1]["run"] == 'make drift STAGE="$STAGE"'
