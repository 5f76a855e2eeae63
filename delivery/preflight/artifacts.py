"""Every model artifact the stage's endpoints load exists before deploy.

The model-artifacts bucket has a generated name: it is known from the
storage stack's ``ModelArtifactsBucketName`` output once that stack exists.
On a first deploy it does not, so no uploaded artifact can exist yet: a
model that needs one fails with the two-step way in. Example models ship
with the deploy itself and are not checked.
"""

from __future__ import annotations

from typing import Iterable

from delivery.preflight import Result, error_code, failed, passed

BUCKET_OUTPUT = "ModelArtifactsBucketName"


def artifacts_bucket(cfn, storage_stack: str) -> str | None:
    """The bucket name from the deployed storage stack; None before its first deploy."""
    try:
        [stack] = cfn.describe_stacks(StackName=storage_stack)["Stacks"]
    except Exception as error:  # noqa: BLE001 - only "does not exist" is expected
        if error_code(error) == "ValidationError":
            return None
        raise
    outputs = {o["OutputKey"]: o.get("OutputValue") for o in stack.get("Outputs", [])}
    return outputs.get(BUCKET_OUTPUT)


def check_model_artifacts(s3, *, bucket: str | None, models: Iterable, stage: str,
                          storage_stack: str) -> list[Result]:
    """One row per model of the stage."""
    rows: list[Result] = []
    for model in models:
        name = f"model {model.name}"
        example = model.example_model
        if example is not None:
            rows.append(passed(name, f"example model {example!r} ships with the deploy"))
        elif model.model_package_group is not None:
            # The synth that preflight checks already failed if no version is pinned.
            rows.append(passed(name, f"model registry group {model.model_package_group!r}, version "
                                     "pinned in ml_stacks/model_pins.json (make refresh-models)"))
        else:
            rows.append(_uploaded(s3, name, bucket=bucket, key=model.model_data_key, stage=stage,
                                  storage_stack=storage_stack))
        if model.shadow is not None:
            rows.append(_uploaded(s3, f"{name} shadow candidate", bucket=bucket,
                                  key=model.shadow.model_data_key, stage=stage, storage_stack=storage_stack))
    return rows


def _uploaded(s3, name: str, *, bucket: str | None, key: str, stage: str, storage_stack: str) -> Result:
    """Whether ``key`` was uploaded to the model-artifacts bucket, with the way in if not."""
    if bucket is None:
        return failed(
            name, f"{storage_stack} is not deployed: s3://<model-artifacts>/{key} cannot exist yet",
            f"node_modules/.bin/cdk deploy -c stages={stage} '{stage}/storage' (creates the bucket), "
            f"then aws s3 cp model.tar.gz "
            f"s3://$(aws cloudformation describe-stacks --stack-name {storage_stack} --query "
            f"\"Stacks[0].Outputs[?OutputKey=='{BUCKET_OUTPUT}'].OutputValue\" --output text)/{key}")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except Exception as error:  # noqa: BLE001 - only "not found" is expected
        if error_code(error) not in ("404", "NoSuchKey", "NotFound"):
            raise
        return failed(name, f"s3://{bucket}/{key} does not exist",
                      f"upload it: aws s3 cp model.tar.gz s3://{bucket}/{key}")
    return passed(name, f"s3://{bucket}/{key} exists ({head['ContentLength']} bytes)")
