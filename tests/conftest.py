"""One synthesized app per test process, shared by every test in it.

The app comes from the same ``build_app`` that ``app.py`` calls, with the
repository's stage configs, and is synthesized once per process (cdk-nag
gate included: an unacknowledged finding fails the fixture, and so every
test that uses it). ``make test`` runs the suite on pytest-xdist workers;
every test that uses the synthesis is sent to the same worker (xdist group
``synth``, ``--dist loadgroup``), so the whole app is synthesized once per
run, not once per worker.

Tests read stage values from ``synthesized.configs[stage]`` (or build their
own small configs), never from literals: with ``ML_TEST_CONFIG_VARIANT`` set
(``make test-config-change``), ``default_configs()`` returns the configs as
a user changed them (tests/config_variants.py), and the suite minus the
snapshots must pass all the same.

Nothing here imports aws_cdk at import time: the xdist controller loads
this file too and never synthesizes, and starting the jsii kernel costs
seconds of CPU.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.client
import botocore.loaders
import pytest

from ml_stacks.serving_names import model_stack_id
from tests import config_variants
from tests.property_budget import FAST

if TYPE_CHECKING:
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from ml_stacks.config import StageConfig

pytest_plugins = ["tests.suite_summary", "tests.changed"]

# Fixtures that mean "this test needs the session synthesis".
SYNTH_FIXTURES = frozenset({"synthesized", "all_templates"})
SYNTH_GROUP = "synth"
# At most this many self-synthesizing tests go to one worker under make test-fast.
FAST_SYNTH_GROUP_MAX = 30


def _share_botocore_models() -> None:
    """Parse each botocore/boto3 data file once per test process.

    moto's ``mock_aws`` resets ``boto3.DEFAULT_SESSION``, so every moto test
    builds a new session whose new ``Loader`` parses the service models
    (ec2 alone is megabytes of JSON) again: most of a moto test's setup.
    The loader's own per-instance cache becomes one cache shared by every
    loader with the same search paths, extras and file loader: a second
    session gets the very dicts a second client of the first session gets.
    """
    shared: dict[tuple, object] = {}

    def sharing(name: str, cached):
        def method(self, *args, **kwargs):
            key = (name, tuple(self.search_paths), tuple(self.extras_types), type(self.file_loader),
                   args, tuple(sorted(kwargs.items())))
            if key not in shared:
                shared[key] = cached(self, *args, **kwargs)
            return shared[key]
        return method

    for name in ("list_available_services", "determine_latest_version", "list_api_versions",
                 "load_service_model", "load_data_with_path"):
        setattr(botocore.loaders.Loader, name, sharing(name, getattr(botocore.loaders.Loader, name)))


_share_botocore_models()


def _share_client_classes() -> None:
    """Build each service's client class once per test process.

    A client's class holds one method per API operation (EC2 has over 700),
    and botocore builds it again for every client of every new session: with
    a new session per moto test, that is most of creating a client. The
    class depends only on the service model (one shared object per service,
    above) and on the session's ``creating-client-class`` handlers, which
    are botocore's and boto3's own and the same in every session.
    """
    build = botocore.client.ClientCreator._create_client_class
    built: dict[tuple[str, int], type] = {}

    def create_client_class(self, service_name, service_model):
        key = (service_name, id(service_model._service_description))
        if key not in built:
            built[key] = build(self, service_name, service_model)
        return built[key]

    botocore.client.ClientCreator._create_client_class = create_client_class


_share_client_classes()

# moto's EC2 otherwise turns every public AMI it knows into objects each time
# an EC2 backend is created or reset (twice per moto test, about half a second
# each). One Deep Learning AMI is all the suite launches or describes; set
# before any test module imports moto's EC2 models, so the whole session sees
# the same images whichever tests are selected (until now this depended on
# tests/interruption_aws.py being collected first).
os.environ.setdefault(
    "MOTO_AMIS_PATH",
    str(Path(__file__).resolve().parent / "lambda" / "fixtures" / "interruption_handler" / "moto_amis.json"))

try:
    # Before any test module imports default_configs (see the docstring).
    CONFIG_VARIANT, _VARIANT_ERROR = config_variants.install(), None
except ValueError as error:
    CONFIG_VARIANT, _VARIANT_ERROR = None, str(error)


def pytest_configure(config: pytest.Config) -> None:
    if _VARIANT_ERROR:
        raise pytest.UsageError(_VARIANT_ERROR)


def _stage_names() -> tuple[str, ...]:
    import ml_stacks.config

    return tuple(ml_stacks.config.default_configs())


# The stages default_configs() builds (after the variant, if any), in order.
STAGES = _stage_names()
# Every fixed stack a stage can have; training and eks only where the stage
# enables them, replica only with storage.replication_region. "serving" is the
# shared one (its dashboard); each model adds "serving-<model>" (stacks_of).
STACKS = ("network", "replica", "storage", "ops", "idle", "training", "serving", "eks")


def stacks_of(config: StageConfig) -> tuple[str, ...]:
    """Construct IDs of every stack ``build_app`` gives the stage ``config``, one per model included."""
    disabled = {"training"} if not config.training.enabled else set()
    disabled |= {"eks"} if not config.eks.enabled else set()
    disabled |= {"replica"} if config.storage.replication_region is None else set()
    fixed = tuple(s for s in STACKS if s not in disabled)
    return (*fixed, *(model_stack_id(m.name) for m in config.serving.models))


def _all_stacks() -> tuple[tuple[str, str], ...]:
    import ml_stacks.config

    return tuple((name, stack) for name, config in ml_stacks.config.default_configs().items()
                 for stack in stacks_of(config))


# (stage, stack) of every stack the configs synthesize (after the variant, if any).
ALL_STACKS = _all_stacks()


@dataclass(frozen=True)
class SynthesizedStack:
    stage: str
    name: str  # construct id inside the stage: "network", "storage"
    stack_name: str
    template_path: Path
    termination_protection: bool
    environment: str

    @property
    def template_json(self) -> dict:
        return json.loads(self.template_path.read_text())

    @property
    def template(self) -> Template:
        from aws_cdk.assertions import Template

        return Template.from_json(self.template_json)


@dataclass(frozen=True)
class Synthesized:
    app: cdk.App
    outdir: Path
    configs: dict[str, StageConfig]
    stacks: dict[tuple[str, str], SynthesizedStack]

    def stack(self, stage: str, name: str) -> SynthesizedStack:
        return self.stacks[(stage, name)]

    def template(self, stage: str, name: str) -> Template:
        return self.stacks[(stage, name)].template


def synthesize(configs: dict[str, StageConfig], outdir: Path) -> Synthesized:
    from ml_stacks.app_factory import build_app

    app = build_app(configs.values(), outdir=str(outdir))
    assembly = app.synth()
    stacks: dict[tuple[str, str], SynthesizedStack] = {}
    for nested in assembly.nested_assemblies:
        for artifact in nested.nested_assembly.stacks:
            stage, name = artifact.hierarchical_id.split("/")
            stacks[(stage, name)] = SynthesizedStack(
                stage=stage,
                name=name,
                stack_name=artifact.stack_name,
                template_path=Path(nested.nested_assembly.directory) / artifact.template_file,
                termination_protection=bool(artifact.termination_protection),
                environment=artifact.environment.name,
            )
    return Synthesized(app=app, outdir=outdir, configs=configs, stacks=stacks)


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    from ml_stacks.config import default_configs

    return synthesize(default_configs(), tmp_path_factory.mktemp("cdk.out"))


@pytest.fixture(scope="session")
def all_templates(synthesized: Synthesized) -> dict[tuple[str, str], dict]:
    return {key: stack.template_json for key, stack in synthesized.stacks.items()}


def replicated_dev() -> tuple["StageConfig", str]:
    """Dev (which keeps no data) replicating into another region, as a user
    trying replication out would configure it; and that region. Its replica
    empties itself on destroy through CDK's provider function."""
    from dataclasses import replace

    from ml_stacks.config import default_configs

    dev = default_configs()["dev"]
    assert not dev.storage.retain
    region = next(r for r in ("us-west-2", "eu-west-1") if r != dev.region)
    return replace(dev, storage=replace(dev.storage, replication_region=region)), region


def resources_of_type(template: dict, resource_type: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == resource_type}


# A test module that synthesizes apps of its own (not the session's).
_OWN_SYNTH = re.compile(r"build_app\(|\.synth\(|Template\.from_stack\(|synthesize\(")


@functools.lru_cache(maxsize=None)
def _synthesizes(path: str) -> bool:
    return bool(_OWN_SYNTH.search(Path(path).read_text(encoding="utf-8")))


def _group_own_synthesis(items: list[pytest.Item]) -> None:
    """Under ``make test-fast``: the tests of modules that synthesize apps of
    their own go to one worker when they are few (``FAST_SYNTH_GROUP_MAX``)
    and fewer than the other tests, so only one worker pays the cold start
    (jsii, aws-cdk-lib, the validation engine: about 5 s of CPU) while the
    other runs the rest. Otherwise they stay spread out: many syntheses on
    one worker would cost more than the second cold start saves."""
    runnable = [i for i in items if not (i.get_closest_marker("slow") or i.get_closest_marker("scale"))]
    own = [i for i in runnable if _synthesizes(str(i.path))]
    if own and len(own) <= min(FAST_SYNTH_GROUP_MAX, len(runnable) - len(own)):
        for item in own:
            item.add_marker(pytest.mark.xdist_group(SYNTH_GROUP))


def _uses_module_fixture(item: pytest.Item) -> bool:
    definitions = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(defs and defs[-1].scope in ("module", "class") for defs in definitions.values())


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep shared work on one xdist worker; the session synthesis is slow.

    Every test that uses the session synthesis goes to group ``synth``; the
    tests of a module that share a module-scoped fixture (a synthesis, the
    ``make diff`` run, a drill) go to one group per module, or to ``synth``
    when some test of that module uses the session synthesis too, so no
    fixture is built on two workers. Runs before xdist's own hook, which
    turns the ``xdist_group`` mark into the ``@group`` suffix of the node id
    that ``--dist loadgroup`` schedules by. Without xdist (or with another
    ``--dist``) the mark does nothing.
    """
    uses_synth = {item: bool(SYNTH_FIXTURES & set(getattr(item, "fixturenames", ()))) for item in items}
    if FAST:
        _group_own_synthesis([i for i in items if not uses_synth[i] and not _uses_module_fixture(i)])
    modules_with_synth = {item.module for item in items if uses_synth[item] and hasattr(item, "module")}
    for item in items:
        if uses_synth[item]:
            item.add_marker(pytest.mark.xdist_group(SYNTH_GROUP))
            item.add_marker(pytest.mark.slow)  # the whole app, every stage: make test-fast leaves it out
        elif _uses_module_fixture(item):
            module = getattr(item, "module", None)
            group = SYNTH_GROUP if module in modules_with_synth else item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))
