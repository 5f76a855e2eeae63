"""The repository's stage configs as a user changes them, for the test suite.

The unit tests assert what a stage builds from its config, not the
repository's own stage values (those are the snapshots' job, tests/snapshot).
This module is the proof: with ``ML_TEST_CONFIG_VARIANT=<name>`` in the
environment, ``tests/conftest.py`` calls :func:`install`, and every
``default_configs()`` the test process calls (the session's synthesized app,
the tests, and the CLIs they run in-process) returns the configs with that
variant's edits applied. ``make test-config-change`` runs the suite minus the
snapshots that way, and CI runs it as its own step.

Variants:

``documented-changes``
    The two config changes the README walks a user through, made to dev:
    the training fleet's ``max_capacity`` one larger (2 -> 3 today: the
    configuration table), and a second model appended to
    ``serving.models`` exactly as the README's "How to add a model" example
    writes it (tests/unit/test_config_variants.py checks the example in the
    docs is this one).

Subprocesses (``python -m delivery...``, ``cdk synth``, ``make``) import the
real ``ml_stacks.config`` and see the repository's configs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Callable, Mapping

from ml_stacks.config import ModelConfig, StageConfig

ENV = "ML_TEST_CONFIG_VARIANT"

Configs = dict[str, StageConfig]

# The README's "How to add a model" example, field for field.
DOCUMENTED_EXAMPLE_MODEL = ModelConfig(
    name="ranker", image_tag="ranker-1.4.0",
    model_data_key="ranker/v1/model.tar.gz", instance_type="ml.c5.xlarge",
    smoke_payload="payloads/ranker.json",
    min_instance_count=1, max_instance_count=3,
)
DOCUMENTED_STAGE = "dev"


def documented_changes(configs: Mapping[str, StageConfig]) -> Configs:
    """Dev's training ``max_capacity`` + 1 and the README's example model appended."""
    stage = configs[DOCUMENTED_STAGE]
    changed = replace(
        stage,
        training=replace(stage.training, max_capacity=stage.training.max_capacity + 1),
        serving=replace(stage.serving, models=(*stage.serving.models, DOCUMENTED_EXAMPLE_MODEL)),
    )
    return {**configs, DOCUMENTED_STAGE: changed}


VARIANTS: dict[str, Callable[[Mapping[str, StageConfig]], Configs]] = {
    "documented-changes": documented_changes,
}


def active() -> str | None:
    """The variant named in the environment, None when unset or empty."""
    name = os.environ.get(ENV, "").strip()
    if not name:
        return None
    if name not in VARIANTS:
        raise ValueError(f"{ENV}={name!r} is not a config variant: one of {', '.join(VARIANTS)}")
    return name


def wrap(default_configs: Callable[..., Configs], name: str) -> Callable[..., Configs]:
    """``default_configs`` with the variant ``name`` applied to what it returns."""
    variant = VARIANTS[name]

    def varied_default_configs(*args, **kwargs) -> Configs:
        return variant(default_configs(*args, **kwargs))

    varied_default_configs.__wrapped__ = default_configs  # type: ignore[attr-defined]
    varied_default_configs.__doc__ = f"default_configs() with the {name!r} config variant applied."
    varied_default_configs.variant = name  # type: ignore[attr-defined]
    return varied_default_configs


def install() -> str | None:
    """Apply the environment's variant to every ``default_configs`` of this process.

    Rebinds the name in ``ml_stacks.config`` (what ``from ml_stacks.config
    import default_configs`` reads afterwards) and in every module already
    imported that holds the original function (the module that defines it,
    and any that imported it before the test session started). Returns the
    variant's name, None when there is none. Installing twice is a no-op.
    """
    name = active()
    if name is None:
        return None
    import ml_stacks.config as config

    original = getattr(config.default_configs, "__wrapped__", config.default_configs)
    if getattr(config.default_configs, "variant", None) == name:
        return name
    varied = wrap(original, name)
    for module in list(sys.modules.values()):
        # vars(): no module-level __getattr__ (lazy imports) is triggered.
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict) and namespace.get("default_configs") is original:
            module.default_configs = varied
    config.default_configs = varied
    return name


def repository_default_configs() -> Callable[..., Configs]:
    """The repository's own ``default_configs``, unwrapped when a variant is installed."""
    import ml_stacks.config as config

    function = config.default_configs
    return getattr(function, "__wrapped__", function)


def repository_configs() -> Configs:
    """The repository's own stage configs, whatever variant is installed: for
    tests that build their own config from them, and for what a subprocess
    (the pinned CLI, ``make``) synthesizes, which no variant reaches."""
    return repository_default_configs()()


# Reason to skip a test of the repository's own figures under a variant.
REPOSITORY_VALUES = ("checks the repository's own stage values (like the snapshots): "
                     "a documented config change updates them with the snapshots")
