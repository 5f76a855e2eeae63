"""One snapshot per stack. Update on purpose only: `make test ARGS=--snapshot-update`,
and say why in the commit message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from syrupy.extensions.json import JSONSnapshotExtension

from tests.conftest import ALL_STACKS

pytestmark = [pytest.mark.slow, pytest.mark.gate("snapshots")]

_ASSET_HASH = re.compile(r"\b[0-9a-f]{64}\b")
_ACCOUNT_ID = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")


def normalized(template: dict) -> dict:
    """Asset hashes change with any byte of an asset and account IDs with the
    deployer: neither is a reviewable infrastructure change."""
    text = json.dumps(template, sort_keys=True)
    text = _ASSET_HASH.sub("<asset-hash>", text)
    text = _ACCOUNT_ID.sub("<account-id>", text)
    return json.loads(text)


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


@pytest.mark.parametrize(("stage", "stack"), ALL_STACKS)
def test_stack_matches_snapshot(all_templates, snapshot_json, stage, stack) -> None:
    if (stage, stack) not in all_templates:
        pytest.skip(f"{stage} has no {stack} stack")
    assert normalized(all_templates[(stage, stack)]) == snapshot_json


def test_normalization_hides_only_hashes_and_accounts() -> None:
    template = {"Key": "a" * 64 + ".zip", "Arn": "arn:aws:iam::123456789012:role/x", "Port": 443}
    assert normalized(template) == {"Key": "<asset-hash>.zip",
                                    "Arn": "arn:aws:iam::<account-id>:role/x", "Port": 443}


def test_every_snapshot_file_belongs_to_a_stack_of_a_stage(request) -> None:
    """syrupy 4 does not look for unused snapshots under pytest-xdist, which
    `make test` uses: the snapshot of a stage or stack that is gone fails here.
    `make test ARGS=--snapshot-update` runs in one process, where syrupy
    deletes it (and this check waits for that run to end)."""
    if request.config.getoption("--snapshot-update"):
        pytest.skip("syrupy deletes unused snapshots at the end of an update run")
    directory = Path(__file__).parent / "__snapshots__" / Path(__file__).stem
    expected = {f"test_stack_matches_snapshot[{stage}-{stack}].json" for stage, stack in ALL_STACKS}
    assert {path.name for path in directory.iterdir()} <= expected
