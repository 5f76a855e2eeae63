"""`make preflight`: the whole run on a freshly created (moto) account is
read-only, prints one line per check and a summary, exits 1 on a FAIL, and
without credentials says so in one line. It is the first step of `make
deploy` and of the deploy workflow."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import yaml

from delivery.cli_errors import run
from delivery.preflight import FAIL, PASS, WARN
from delivery.preflight import __main__ as cli
from delivery.preflight.runner import run_checks
from ml_stacks.app_factory import PROJECT_ROOT
from tests.delivery.preflight_world import FreshAccount, fresh_account, new_account, pinned_images

_NOW = dt.datetime.now(dt.timezone.utc)
READ_ONLY = re.compile(r"^[a-z0-9-]+:(Describe|Get|List|Head)[A-Za-z]*$")


def _ready_account(config) -> FreshAccount:
    """An account with room for everything ``config`` needs at max capacity."""
    from delivery.preflight.quotas import endpoint_instances_need, quota_needs

    needs = quota_needs(config) + [endpoint_instances_need(config)]
    return FreshAccount(
        quotas={n.code: float(n.update_peak) for n in needs if n.code} | {"L-1194D53C": 100.0,
                                                                          "L-0485CB21": 2000.0},
        sagemaker_quotas={n.name: float(n.update_peak) for n in needs if not n.code},
        lambda_limit=1000, lambda_unreserved=1000,
        addon_versions={name: [v] for name, v in config.eks.addons.as_dict().items()},
        # In standard support for a year from whenever the test runs.
        cluster_versions={config.eks.kubernetes_version: (_NOW + dt.timedelta(days=365),
                                                          _NOW + dt.timedelta(days=730))},
        tag_status="Active", images=pinned_images(config.region))


def _bootstrap(client, *region: str) -> None:
    """What ``cdk bootstrap`` leaves in the stage's region (or ``region``)."""
    client("cloudformation", *region).create_stack(StackName="CDKToolkit", TemplateBody=json.dumps({
        "Resources": {"StagingBucket": {"Type": "AWS::S3::Bucket"}},
        "Outputs": {"BootstrapVersion": {"Value": "29"}}}))
    client("ssm", *region).put_parameter(Name="/cdk-bootstrap/hnb659fds/version", Value="29", Type="String")


def _bootstrapped_with_artifacts(client, config) -> None:
    """What a user does before a first staging/prod deploy: bootstrap, the
    storage stack, the artifact upload."""
    cfn, s3 = client("cloudformation"), client("s3")
    _bootstrap(client)
    bucket = f"{config.stack_prefix}-model-artifacts-test"
    cfn.create_stack(StackName=f"{config.stack_prefix}-storage", TemplateBody=json.dumps({
        "Resources": {"ModelArtifacts": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": bucket}}},
        "Outputs": {"ModelArtifactsBucketName": {"Value": {"Ref": "ModelArtifacts"}}}}))
    for model in config.serving.models:
        if model.model_data_key:
            s3.put_object(Bucket=bucket, Key=model.model_data_key, Body=b"model")


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_a_whole_run_makes_only_read_calls(synthesized, stage) -> None:
    config = synthesized.configs[stage]
    with fresh_account(new_account()) as (client, calls):
        rows = run_checks(config, assembly_dir=synthesized.outdir, client=client, session_region="us-east-1")
    assert len(calls) > 20
    assert [c for c in calls if not READ_ONLY.match(c)] == []
    # Every group of checks produced its rows, none was lost to an error.
    assert not [r for r in rows if r.figure.startswith("could not check")]
    checks = {r.check.split(" ")[0] for r in rows}
    assert {"account", "region", "cdk", "zone", "offered", "quota", "lambda", "addon", "model",
            "leftovers", "cost"} <= checks


def test_a_stage_named_by_zone_ids_is_checked_by_zone_id(synthesized) -> None:
    import dataclasses

    config = synthesized.configs["dev"]
    # No cluster: EKS creates none in use1-az3 (the config refuses that zone for a stage with one).
    config = dataclasses.replace(config, network=dataclasses.replace(
        config.network, availability_zones=("use1-az1", "use1-az3")),
        eks=dataclasses.replace(config.eks, enabled=False))
    with fresh_account(new_account()) as (client, _):
        rows = run_checks(config, assembly_dir=synthesized.outdir, client=client, session_region="us-east-1")
        names = {z["ZoneId"]: z["ZoneName"] for z in client("ec2").describe_availability_zones()["AvailabilityZones"]}
    by_check = {r.check: r for r in rows}
    assert by_check["zone use1-az1"].figure == f"use1-az1 is {names['use1-az1']} in this account, available"
    # moto's EC2 data (from AWS) offers no g5/g6 in use1-az3: the fleet runs in use1-az1 only.
    fleet = by_check["offered training fleet"]
    assert fleet.status == WARN and fleet.fix.endswith("no type of the group in use1-az3, it runs in the other zones only")


def test_a_stage_without_fleet_or_cluster_checks_what_it_has(synthesized) -> None:
    import dataclasses

    config = synthesized.configs["dev"]
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, enabled=False),
                                 eks=dataclasses.replace(config.eks, enabled=False))
    with fresh_account(new_account()) as (client, calls):
        rows = run_checks(config, assembly_dir=synthesized.outdir, client=client, session_region="us-east-1")
    checks = [r.check for r in rows]
    assert not [c for c in checks if c.startswith(("offered", "addon", "release", "ami", "quota ec2", "quota eks"))]
    assert {f"quota sagemaker {m.instance_type}" for m in config.serving.models} <= set(checks)
    assert "ec2:DescribeInstanceTypeOfferings" not in calls


def test_a_check_the_credentials_may_not_run_is_a_fail_line_not_a_crash(synthesized) -> None:
    account = new_account()
    account.denied = {"GetServiceQuota", "ListCostAllocationTags"}
    with fresh_account(account) as (client, _):
        rows = run_checks(synthesized.configs["dev"], assembly_dir=synthesized.outdir, client=client,
                          session_region="us-east-1")
    by_check = {r.check: r for r in rows}
    assert by_check["quotas"].status == FAIL
    assert "access denied to GetServiceQuota" in by_check["quotas"].figure
    # Cost allocation tags live with the organization's management account: only a warning.
    assert by_check["cost allocation tag"].status == WARN
    assert "access denied to ListCostAllocationTags" in by_check["cost allocation tag"].figure
    assert by_check["leftovers"].status == PASS  # the other checks still ran


def test_a_fresh_account_blocks_the_deploy_on_bootstrap_and_quotas(synthesized) -> None:
    config = synthesized.configs["prod"]
    with fresh_account(new_account()) as (client, _):
        rows = run_checks(config, assembly_dir=synthesized.outdir, client=client, session_region="us-east-1")
    failed = {r.check for r in rows if r.status == FAIL}
    assert {"cdk bootstrap", "quota ec2 L-DB2E81BA", "model classifier"} <= failed
    assert next(r for r in rows if r.check == "cost allocation tag").status == WARN


def test_an_account_with_room_passes_the_quota_and_lambda_checks(synthesized) -> None:
    config = synthesized.configs["staging"]
    with fresh_account(_ready_account(config)) as (client, _):
        rows = run_checks(config, assembly_dir=synthesized.outdir, client=client, session_region="us-east-1")
    by_check = {r.check: r for r in rows}
    assert all(r.status == PASS for c, r in by_check.items() if c.startswith(("quota", "addon", "zone", "offered")))
    assert by_check["cost allocation tag"].status == PASS


def test_a_prepared_account_is_ready_to_deploy(synthesized, monkeypatch, capsys) -> None:
    config = synthesized.configs["staging"]
    with fresh_account(_ready_account(config)) as (client, calls):
        _bootstrapped_with_artifacts(client, config)
        monkeypatch.setattr(cli, "_client_factory", lambda region: (client, region))
        status = cli.main(["--stage", "staging", "--assembly", str(synthesized.outdir)])
    out = capsys.readouterr().out.splitlines()
    reserved = sum(r.get("Properties", {}).get("ReservedConcurrentExecutions", 0)
                   for s in synthesized.stacks.values() if s.stage == "staging"
                   for r in s.template_json["Resources"].values() if r["Type"] == "AWS::Lambda::Function")
    assert status == 0, "\n".join(line for line in out if not line.startswith(PASS))
    assert out[-1].endswith("0 FAIL — ready to deploy")
    assert [line for line in out[:-1] if not line.startswith(PASS)] == []
    assert f"stage reserves {reserved} across" in next(line for line in out if "lambda concurrency" in line)


def test_a_stage_with_a_replica_is_checked_in_the_replicas_region_too(synthesized) -> None:
    config = synthesized.configs["prod"]
    assert len(config.regions) == 2, "prod replicates into a second region"
    other = config.regions[1]
    with fresh_account(_ready_account(config)) as (client, _):
        _bootstrapped_with_artifacts(client, config)
        rows = {r.check: r for r in run_checks(config, assembly_dir=synthesized.outdir, client=client,
                                               session_region=config.region)}
        assert rows["cdk bootstrap"].status == PASS
        assert (rows[f"region {other}"].status, rows[f"region {other}"].figure) == (
            PASS, f"region {other} (opt-in-not-required)")
        assert rows[f"cdk bootstrap {other}"].status == FAIL
        assert rows[f"cdk bootstrap {other}"].figure.endswith(f"/{other}; this app needs bootstrap version >= 6")
        assert rows["leftovers"].status == PASS

        # The replica region bootstrapped; a make destroy left prod's retained
        # replica bucket there, with its fixed name.
        _bootstrap(client, other)
        account_id = client("sts").get_caller_identity()["Account"]
        name = f"{config.stack_prefix}-training-data-replica-{account_id}-{other}"
        client("s3", other).create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": other})
        rows = {r.check: r for r in run_checks(config, assembly_dir=synthesized.outdir, client=client,
                                               session_region=config.region)}
    assert rows[f"cdk bootstrap {other}"].status == PASS
    leftover = rows[f"leftover {name}"]
    assert leftover.status == FAIL
    assert leftover.figure == (f"AWS::S3::Bucket {name} exists in {other} but "
                               f"{config.stack_prefix}-replica does not manage it")
    assert "cdk import -c stages=prod 'prod/replica' (answer the prompt for TrainingData" in leftover.fix
    assert f"aws s3 rb s3://{name} --force" in leftover.fix


def _iam_action(call: str) -> str:
    service, operation = call.split(":")
    prefix = {"service-quotas": "servicequotas"}.get(service, service)
    return {"s3:HeadObject": "s3:GetObject", "s3:HeadBucket": "s3:ListBucket"}.get(call, f"{prefix}:{operation}")


def test_the_documented_permissions_are_the_calls_a_run_makes(synthesized) -> None:
    made: set[str] = set()
    for stage in ("dev", "prod"):
        config = synthesized.configs[stage]
        with fresh_account(_ready_account(config)) as (client, calls):
            _bootstrapped_with_artifacts(client, config)
            client("logs").create_log_group(logGroupName=f"/aws/eks/{config.stack_prefix}/cluster")
            calls.clear()
            run_checks(config, assembly_dir=synthesized.outdir, client=client, session_region="us-east-1")
        made |= {_iam_action(c) for c in calls}
    from delivery.preflight.runner import IAM_ACTIONS

    conditional = {
        "ec2:DescribeInstanceTypes",  # a type missing from the vCPU table
        "servicequotas:GetAWSDefaultServiceQuota",  # a quota without an applied value
        "ecr:DescribeRepositories",  # a template that names its repository
        "sagemaker:DescribeModelPackage",  # a stage serving a model registry version
    }  # iam:GetRole is made: prod's replication role has a fixed name (the replica key admits it by name)
    assert made <= set(IAM_ACTIONS)
    assert set(IAM_ACTIONS) - made == conditional
    readme = (PROJECT_ROOT / "docs" / "deploying.md").read_text()
    assert [a for a in IAM_ACTIONS if f"`{a}`" not in readme] == []


def test_main_prints_a_line_per_check_and_exits_1_on_a_fail(synthesized, monkeypatch, capsys, tmp_path) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    with fresh_account(new_account()) as (client, _):
        monkeypatch.setattr(cli, "_client_factory", lambda region: (client, region))
        status = cli.main(["--stage", "dev", "--assembly", str(synthesized.outdir)])
    out = capsys.readouterr().out.splitlines()
    assert status == 1
    table, last = out[:-1], out[-1]
    assert all(line.split("  ")[0] in (PASS, WARN, FAIL) for line in table)
    fails = sum(line.startswith(FAIL) for line in table)
    assert re.fullmatch(rf"preflight dev: {len(table)} checks, \d+ PASS, \d+ WARN, {fails} FAIL — deploy blocked",
                        last)
    assert all("-> fix: " in line for line in table if not line.startswith(PASS))
    assert last in summary.read_text()


def test_no_credentials_is_one_line(synthesized, monkeypatch, capsys) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    status = run(lambda: cli.main(["--stage", "dev", "--assembly", str(synthesized.outdir)]))
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and err.startswith("error: no AWS credentials found: set AWS_PROFILE")


def test_a_missing_assembly_is_one_line(tmp_path, capsys) -> None:
    assert run(lambda: cli.main(["--stage", "dev", "--assembly", str(tmp_path)])) == 1
    assert "make preflight STAGE=dev` (it synthesizes first)" in capsys.readouterr().err


def test_quota_needs_print_without_credentials(capsys) -> None:
    assert cli.main(["--stage", "prod", "--quotas"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["service", "code", "quota", "at", "deploy", "at", "max", "capacity"]
    assert any(line.startswith("ec2        L-DB2E81BA") for line in lines)


def test_preflight_is_the_first_step_of_make_deploy() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    deploy = makefile.split("\ndeploy: setup\n", 1)[1].split("\n\n", 1)[0]
    assert deploy.index("preflight STAGE=") < deploy.index("$(CDK) deploy --app cdk.out")
    preflight = makefile.split("\npreflight: setup\n", 1)[1].split("\n\n", 1)[0]
    assert "synth --quiet $(ONE_STAGE)" in preflight and "python -m delivery.preflight" in preflight


def test_preflight_runs_before_deploy_in_the_workflow() -> None:
    steps = yaml.safe_load((PROJECT_ROOT / ".github/workflows/deploy-stage.yml").read_text())["jobs"]["deploy"]["steps"]
    runs = [s.get("run", "") for s in steps]
    first = next(i for i, r in enumerate(runs) if r.startswith("make "))
    assert runs[first] == 'make preflight STAGE="$STAGE"'
    assert runs[-1] == 'make deploy STAGE="$STAGE" REQUIRE_APPROVAL=never PREFLIGHT=done'
