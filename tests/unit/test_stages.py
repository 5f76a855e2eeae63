"""Adding a stage is one entry in ``ml_stacks/config/stages.py``.

Each test adds a ``perf`` stage the way the docs say (a ``_perf_config`` built
from an existing stage, registered in ``STAGES``) and shows that everything
else picks it up: the app, the stage check every ``make`` target runs, and
the account/region the stacks deploy to.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from delivery import stage_check
from ml_stacks.app_factory import build_app
from ml_stacks.config import (ConfigError, NetworkConfig, default_configs,
                              pytorch_inference_image, select_stages)
from ml_stacks.config import stages as stage_values

PERF_ACCOUNT = "111122223333"


def _perf_config(region: str, zones: tuple[str, ...]):
    staging = stage_values.STAGES["staging"]()
    models = tuple(replace(m, image_uri=pytorch_inference_image(region, gpu=True))
                   for m in staging.serving.models)
    return replace(staging, name="perf", account=PERF_ACCOUNT, region=region,
                   network=replace(staging.network, vpc_cidr="10.40.0.0/16",
                                   availability_zones=zones),
                   serving=replace(staging.serving, models=models))


@pytest.fixture
def with_perf(monkeypatch: pytest.MonkeyPatch):
    def add(region: str, zones: tuple[str, ...]) -> None:
        registry = dict(stage_values.STAGES)
        registry["perf"] = lambda: _perf_config(region, zones)
        monkeypatch.setattr(stage_values, "STAGES", registry)
    return add


def test_a_stage_added_to_stages_synthesizes_in_its_own_account(with_perf, tmp_path) -> None:
    with_perf("us-east-1", ("us-east-1a", "us-east-1b"))
    configs = default_configs()
    assert list(configs) == [*stage_values.STAGES]
    perf = select_stages(configs, "perf")
    assembly = build_app(perf, outdir=str(tmp_path)).synth()
    stacks = [s for nested in assembly.nested_assemblies for s in nested.nested_assembly.stacks]
    assert sorted(s.stack_name for s in stacks) == sorted(
        f"ml-perf-{name}" for name in ("network", "storage", "ops", "idle", "training",
                                       "serving", "eks",
                                       *(f"serving-{m.name}" for m in perf[0].serving.models)))
    assert {s.environment.account for s in stacks} == {PERF_ACCOUNT}
    assert {s.environment.region for s in stacks} == {"us-east-1"}


def test_the_stage_check_of_every_make_target_accepts_the_new_stage(with_perf, capsys) -> None:
    with_perf("us-east-1", ("us-east-1a", "us-east-1b"))
    assert stage_check.main(["--stages", "perf"]) == 0
    assert stage_check.stage_config("perf").account == PERF_ACCOUNT
    # -c account=... (CI) still overrides the stage's own account.
    assert stage_check.stage_config("perf", account="444455556666").account == "444455556666"


def test_a_stage_in_a_region_without_pinned_amis_says_how_to_pin_them(with_perf, tmp_path) -> None:
    with_perf("eu-west-1", ("eu-west-1a", "eu-west-1b"))
    perf = select_stages(default_configs(), "perf")
    with pytest.raises(ConfigError) as caught:
        build_app(perf, outdir=str(tmp_path)).synth()
    assert "eu-west-1" in str(caught.value) and "make refresh-amis" in str(caught.value)


def test_public_eks_access_from_context_opens_only_the_stages_that_allow_it() -> None:
    cidrs = ("203.0.113.0/24",)
    configs = default_configs(eks_public_access_cidrs=cidrs)
    for name, config in configs.items():
        expected = cidrs if name in stage_values.PUBLIC_EKS_ENDPOINT_STAGES else ()
        assert config.eks.public_access_cidrs == expected, name


def test_every_stage_names_its_own_region_and_validates_alone() -> None:
    for name, build in stage_values.STAGES.items():
        config = build()
        assert config.name == name
        assert isinstance(config.network, NetworkConfig)
        assert config.network.availability_zones[0].startswith(config.region[:-1]) \
            or config.network.uses_zone_ids
