"""``make smoke STAGE=<stage>``: invoke every model of a deployed stage once.

For each model in the stage's ``serving.models``, reads the endpoint (and,
with scale to zero, the inference component) name from the outputs of the
model's own stack ``ml-<stage>-serving-<model>``, sends the model's smoke payload (an example model's
``payload.json``, or ``smoke_payload``) with ``InvokeEndpoint``, and prints
the answer and the round-trip latency. Exit status 0 when every model
answered, 1 otherwise.

Scale to zero: a component with no copy answers ``ValidationError``
"Inference Component has no capacity to process this request"; that failed
request is what scales it out (the ``NoCapacityInvocationFailures`` alarm),
and an instance takes minutes to come up. Smoke says so, retries every
``--retry-seconds`` until ``--wait-seconds`` have passed, and reports how
long the cold start took. ``ModelNotReadyException`` and ``ServiceUnavailable``
are retried the same way; any other error fails that model at once.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from delivery.cli_errors import UserError, run

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_WAIT_SECONDS = 900
DEFAULT_RETRY_SECONDS = 20
CONTENT_TYPES = {".json": "application/json", ".csv": "text/csv"}
# Codes InvokeEndpoint answers while capacity or the model is still coming up.
_NOT_READY_CODES = frozenset({"ModelNotReadyException", "ServiceUnavailable"})


@dataclass(frozen=True)
class Target:
    """One model to invoke: where, and with what."""

    model: str
    endpoint: str
    component: str | None
    payload: Path
    content_type: str


@dataclass(frozen=True)
class Answer:
    body: str
    content_type: str
    latency_ms: float
    attempts: int
    waited_seconds: float


def stack_outputs(cfn, stack_name: str, region: str, stage: str) -> dict[str, str]:
    """The outputs of ``stack_name``; a stack that is not there is a one-line error."""
    from botocore.exceptions import ClientError

    try:
        [stack] = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "ValidationError" and "does not exist" in str(error):
            raise UserError(f"stack {stack_name} does not exist in {region}: "
                            f"deploy the stage first (make deploy STAGE={stage})") from None
        raise
    if stack["StackStatus"].endswith("_IN_PROGRESS") or "ROLLBACK" in stack["StackStatus"]:
        raise UserError(f"stack {stack_name} is {stack['StackStatus']}: wait for the deploy to finish, "
                        "or read its events in the CloudFormation console")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def targets(config, outputs: dict[str, str]) -> list[Target]:
    """What to invoke for each model of ``config``, from its stack's outputs
    (``outputs``: those of every model stack of the stage; their keys name the model)."""
    from ml_stacks.serving_names import component_output_key, endpoint_output_key, model_stack_name

    found = []
    for model in config.serving.models:
        stack_name = model_stack_name(config, model.name)
        keys = [endpoint_output_key(model.name)]
        if model.scale_to_zero:
            keys.append(component_output_key(model.name))
        missing = [key for key in keys if key not in outputs]
        if missing:
            raise UserError(f"{stack_name} has no output {', '.join(missing)} for model {model.name}: "
                            f"deploy the current code (make deploy STAGE={config.name})")
        if model.payload_path is None:
            raise UserError(f"model {model.name} has no payload to send: set smoke_payload "
                            "(a .json or .csv file in the repository) in its ModelConfig")
        payload = REPOSITORY / model.payload_path
        if not payload.is_file():
            raise UserError(f"model {model.name}: payload {model.payload_path} does not exist in the repository")
        found.append(Target(
            model=model.name, endpoint=outputs[keys[0]],
            component=outputs[keys[1]] if len(keys) > 1 else None,
            payload=payload, content_type=CONTENT_TYPES[payload.suffix]))
    return found


def is_not_ready(error) -> bool:
    """Whether ``error`` means "capacity or model still coming up" (retry) rather than a failure."""
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", "")
    return code in _NOT_READY_CODES or (code == "ValidationError" and "no capacity" in message.lower())


def invoke(runtime, target: Target, *, wait_seconds: float, retry_seconds: float,
           out: TextIO, clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> Answer:
    """Invoke ``target`` once, retrying while it is not ready for at most ``wait_seconds``."""
    from botocore.exceptions import ClientError

    body = target.payload.read_bytes()
    request = {"EndpointName": target.endpoint, "Body": body, "ContentType": target.content_type,
               "Accept": "application/json"}
    if target.component:
        request["InferenceComponentName"] = target.component
    start = clock()
    attempts = 0
    while True:
        attempts += 1
        sent = clock()
        try:
            response = runtime.invoke_endpoint(**request)
        except ClientError as error:
            waited = clock() - start
            if not is_not_ready(error):
                raise
            if waited + retry_seconds > wait_seconds:
                raise UserError(
                    f"still not ready after {waited:.0f} s and {attempts} attempts "
                    f"({error.response['Error'].get('Message', '')}); a scaled-in endpoint can take "
                    "longer: retry with ARGS=\"--wait-seconds 1800\"") from None
            if attempts == 1:
                out.write(f"{target.model}: cold start ({error.response['Error'].get('Message', '')}); "
                          f"this request starts an instance, retrying every {retry_seconds:.0f} s "
                          f"for up to {wait_seconds:.0f} s\n")
                out.flush()
            sleep(retry_seconds)
            continue
        latency_ms = (clock() - sent) * 1000
        return Answer(body=response["Body"].read().decode("utf-8", errors="replace"),
                      content_type=response.get("ContentType", ""), latency_ms=latency_ms,
                      attempts=attempts, waited_seconds=sent - start)


def describe_failure(target: Target, error: Exception) -> str:
    """One line for a model that did not answer."""
    from botocore.exceptions import ClientError

    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        hint = (" (the model itself failed: read /aws/sagemaker/Endpoints/"
                f"{target.endpoint} in CloudWatch Logs)" if code == "ModelError" else "")
        return f"{target.model}: FAIL {code}: {message}{hint}"
    return f"{target.model}: FAIL {error}"


def smoke(config, cfn, runtime, *, wait_seconds: float = DEFAULT_WAIT_SECONDS,
          retry_seconds: float = DEFAULT_RETRY_SECONDS, out: TextIO = sys.stdout,
          clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Invoke every model of ``config`` once; 0 when all answered, 1 otherwise."""
    from botocore.exceptions import ClientError

    if not config.serving.models:
        out.write(f"{config.name}: no models in serving.models, nothing to invoke\n")
        return 0
    from ml_stacks.serving_names import model_stack_name

    outputs: dict[str, str] = {}
    for model in config.serving.models:
        outputs.update(stack_outputs(cfn, model_stack_name(config, model.name), config.region,
                                     config.name))
    failed = 0
    for target in targets(config, outputs):
        where = target.endpoint + (f" (inference component {target.component})" if target.component else "")
        try:
            answer = invoke(runtime, target, wait_seconds=wait_seconds, retry_seconds=retry_seconds,
                            out=out, clock=clock, sleep=sleep)
        except (ClientError, UserError) as error:
            if isinstance(error, ClientError) and _credentials_problem(error):
                raise
            out.write(describe_failure(target, error) + "\n")
            failed += 1
            continue
        cold = (f", after a cold start of {answer.waited_seconds:.0f} s ({answer.attempts} attempts)"
                if answer.attempts > 1 else "")
        out.write(f"{target.model}: {where} answered in {answer.latency_ms:.0f} ms{cold}\n"
                  f"  sent {_shown(target.payload)} ({target.content_type}), "
                  f"got {answer.content_type}: {answer.body}\n")
    return 1 if failed else 0


def _shown(path: Path) -> str:
    return str(path.relative_to(REPOSITORY)) if path.is_relative_to(REPOSITORY) else str(path)


def _credentials_problem(error) -> bool:
    from delivery.cli_errors import describe

    line = describe(error) or ""
    return "credentials" in line or "access denied" in line


def main(argv: list[str] | None = None) -> int:
    from ml_stacks.config import default_configs

    configs = default_configs()
    parser = argparse.ArgumentParser(description="Invoke every model of a deployed stage once")
    parser.add_argument("--stage", required=True, choices=list(configs))
    parser.add_argument("--wait-seconds", type=float, default=DEFAULT_WAIT_SECONDS,
                        help=f"how long to retry a cold start (default {DEFAULT_WAIT_SECONDS})")
    parser.add_argument("--retry-seconds", type=float, default=DEFAULT_RETRY_SECONDS,
                        help=f"pause between cold-start retries (default {DEFAULT_RETRY_SECONDS})")
    args = parser.parse_args(argv)
    if args.wait_seconds < 0 or args.retry_seconds <= 0:
        raise UserError("--wait-seconds must be ≥ 0 and --retry-seconds > 0")
    config = configs[args.stage]

    import boto3
    from botocore.config import Config

    cfn = boto3.client("cloudformation", region_name=config.region)
    # An invocation may take up to 60 s on SageMaker's side.
    runtime = boto3.client("sagemaker-runtime", region_name=config.region,
                           config=Config(read_timeout=70, retries={"mode": "standard"}))
    return smoke(config, cfn, runtime, wait_seconds=args.wait_seconds, retry_seconds=args.retry_seconds)


if __name__ == "__main__":
    sys.exit(run(main))
