"""The gates: cdk-nag AwsSolutions, cfn-lint, determinism, the CLI contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk import aws_s3 as s3

from ml_stacks.app_factory import PROJECT_ROOT, build_app
from ml_stacks.config import default_configs
from tests.config_variants import repository_configs
from tests.conftest import stacks_of, synthesize


def test_every_stage_and_stack_is_synthesized_with_readable_names(synthesized) -> None:
    assert set(synthesized.stacks) == {(stage, stack) for stage, config in synthesized.configs.items()
                                       for stack in stacks_of(config)}
    for (stage, stack), synthesized_stack in synthesized.stacks.items():
        assert synthesized_stack.stack_name == f"ml-{stage}-{stack}"
        # No account configured: account-agnostic with a concrete region,
        # the stage's (the replica's: its replication region).
        config = synthesized.configs[stage]
        region = config.storage.replication_region if stack == "replica" else config.region
        assert synthesized_stack.environment == f"aws://{config.account or 'unknown-account'}/{region}"


@pytest.mark.gate("cdk-nag")
def test_nag_gate_fails_synth_on_an_unacknowledged_finding(tmp_path) -> None:
    app = build_app([default_configs()["dev"]], outdir=str(tmp_path))
    storage = app.node.find_child("dev").storage
    s3.Bucket(storage, "PlainBucket")  # no TLS enforcement, no access logs
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    report = json.loads((tmp_path / "validation-report.json").read_text())
    [nag] = [p for p in report["pluginReports"] if p["pluginName"] == "AwsSolutions"]
    rules = {v["ruleName"] for v in nag["violations"]}
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= rules
    paths = {c["constructPath"] for v in nag["violations"] for c in v["violatingConstructs"]}
    assert paths == {"dev/storage/PlainBucket/Resource"}


def test_every_acknowledgement_has_a_real_reason(synthesized) -> None:
    report = json.loads((synthesized.outdir / "validation-report.json").read_text())
    acknowledged = [v for p in report["pluginReports"] for v in p.get("suppressedViolations", [])]
    assert acknowledged, "expected the documented W3010 acknowledgements"
    for violation in acknowledged:
        assert len(violation["reason"]) >= 40, violation
        paths = [c["constructPath"] for c in violation["violatingConstructs"]]
        if "W3010" in violation["ruleName"]:
            assert all(p.endswith("/Subnet") for p in paths), paths
        # Narrow: on a construct inside a stack, never on a stage or a stack.
        assert all(p.count("/") >= 3 for p in paths), (violation["ruleName"], paths)
    assert all(not p.get("violations") for p in report["pluginReports"])


@pytest.mark.slow
@pytest.mark.gate("cfn-lint")
def test_cfn_lint_finds_nothing_in_any_template(synthesized) -> None:
    templates = sorted(str(s.template_path) for s in synthesized.stacks.values())
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", "--", *templates],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=False,
    )
    # Exit code 0 = no errors and no warnings (.cfnlintrc.yaml ignores W3005 only).
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.gate("cfn-lint")
def test_cfn_lint_config_ignores_only_w3005() -> None:
    lines = [ln.strip() for ln in (PROJECT_ROOT / ".cfnlintrc.yaml").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines == ["ignore_checks:", "- W3005"]


@pytest.mark.slow
@pytest.mark.gate("deterministic synth")
def test_two_synths_give_byte_identical_templates(synthesized, tmp_path) -> None:
    again = synthesize(default_configs(), tmp_path)
    assert set(again.stacks) == set(synthesized.stacks)
    for key, stack in synthesized.stacks.items():
        assert again.stacks[key].template_path.read_bytes() == stack.template_path.read_bytes(), key


def _cdk_cli() -> str:
    cli = PROJECT_ROOT / "node_modules" / ".bin" / "cdk"
    assert cli.exists(), "run the suite with `make test`: it installs the pinned CDK CLI"
    return str(cli)


def _cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "CDK_DEFAULT_"))}
    bin_dirs = [str(PROJECT_ROOT / "node_modules" / ".bin"), str(Path(sys.executable).parent)]
    env.update(PATH=os.pathsep.join([*bin_dirs, env.get("PATH", "")]),
               AWS_EC2_METADATA_DISABLED="true", CDK_DISABLE_CLI_TELEMETRY="true",
               CDK_DISABLE_VERSION_CHECK="true")
    return env


@pytest.mark.slow
@pytest.mark.gate("pinned CDK CLI")
def test_pinned_cli_synthesizes_one_stage_with_an_account_offline(tmp_path) -> None:
    """app.py reads -c stages / -c account; the pinned CLI reads our assembly."""
    out = tmp_path / "cdk.out"
    result = subprocess.run(
        [_cdk_cli(), "--no-notices", "synth", "--quiet", "-o", str(out),
         "-c", "stages=dev", "-c", "account=111122223333"],
        cwd=PROJECT_ROOT, env=_cli_env(), capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("assembly-*")) == ["assembly-dev"]
    manifest = json.loads((out / "assembly-dev" / "manifest.json").read_text())
    environments = {a["environment"] for a in manifest["artifacts"].values()
                    if a["type"] == "aws:cloudformation:stack"}
    assert environments == {"aws://111122223333/us-east-1"}

    listed = subprocess.run(
        [_cdk_cli(), "--no-notices", "ls", "--app", str(out)],
        cwd=PROJECT_ROOT, env=_cli_env(), capture_output=True, text=True, check=False, timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-3000:]
    # "dev/network (ml-dev-network)": the stage selector `cdk deploy 'dev/*'` uses.
    # The CLI synthesizes the repository's configs: no test variant reaches a subprocess.
    expected = sorted(stacks_of(repository_configs()["dev"]))
    assert sorted(listed.stdout.splitlines()) == [f"dev/{stack} (ml-dev-{stack})" for stack in expected]


@pytest.mark.slow
@pytest.mark.gate("pinned CDK CLI")
def test_pinned_cli_rejects_an_unknown_stage_with_a_clear_message(tmp_path) -> None:
    result = subprocess.run(
        [_cdk_cli(), "--no-notices", "synth", "--quiet", "-o", str(tmp_path), "-c", "stages=qa"],
        cwd=PROJECT_ROOT, env=_cli_env(), capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode != 0
    assert "stages: 'qa' is not allowed — a comma-separated list of dev, staging, prod" in result.stderr


@pytest.mark.gate("pinned CDK CLI")
def test_node_on_path_is_the_project_local_node_22() -> None:
    node = shutil.which("node", path=_cli_env()["PATH"])
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v22."), version
