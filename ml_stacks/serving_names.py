"""Names of the serving stacks, endpoints and outputs, without loading aws_cdk.

``make smoke`` and preflight read them before (or instead of) any synth:
this module imports nothing but the config, so those commands fail on
missing credentials in one line without starting aws_cdk's Node runtime.
"""

from __future__ import annotations

from ml_stacks.config import ModelConfig, StageConfig

SHARED_STACK_ID = "serving"
MODEL_STACK_PREFIX = "serving-"


def endpoint_name(config: StageConfig, model: ModelConfig) -> str:
    """The SageMaker endpoint name of ``model`` in ``config``'s stage."""
    return f"{config.stack_prefix}-{model.name}"


def model_stack_id(model_name: str) -> str:
    """Construct ID of a model's stack in its stage: ``cdk deploy '<stage>/<this>'``."""
    return f"{MODEL_STACK_PREFIX}{model_name}"


def model_stack_name(config: StageConfig, model_name: str) -> str:
    """CloudFormation name of a model's stack: ``ml-<stage>-serving-<model>``."""
    return f"{config.stack_prefix}-{model_stack_id(model_name)}"


def serving_stack_ids(config: StageConfig) -> tuple[str, ...]:
    """Construct IDs of every serving stack of ``config``'s stage, the shared one first."""
    return (SHARED_STACK_ID, *(model_stack_id(m.name) for m in config.serving.models))


def _output_id(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-") if part)


def endpoint_output_key(model_name: str) -> str:
    """Output of the model's stack holding the endpoint name of ``model_name``."""
    return f"{_output_id(model_name)}EndpointName"


def component_output_key(model_name: str) -> str:
    """Output holding the inference component name of a scale-to-zero ``model_name``."""
    return f"{_output_id(model_name)}InferenceComponentName"
