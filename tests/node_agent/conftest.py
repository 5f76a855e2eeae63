"""Fixtures for the node agent: the agent module loaded from node_agent/ (a plain script, not a package)."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import threading
from pathlib import Path

import pytest

AGENT_PATH = Path(__file__).resolve().parents[2] / "node_agent" / "ml_node_agent.py"


def _load_agent():
    name = "ml_node_agent"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, AGENT_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def agent():
    return _load_agent()


class LogCapture:
    """A JsonLog sink whose lines can be read back as dicts."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def lines(self) -> list:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def steps(self, step: str) -> list:
        return [line for line in self.lines if line["step"] == step]


@pytest.fixture
def logs():
    return LogCapture()


@pytest.fixture
def aws_env(monkeypatch):
    """No real credentials, no real IMDS, no real endpoints for anything boto3 builds in a test."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_AUTO_SCALING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True)
def _no_stalled_upload_outlives_its_test():
    """A stalled upload (helpers.RecordingS3) ends with its test, not 20 s later
    in another test's moto account (seen under pytest-xdist's test order).

    The agent's upload workers also outlive an upload that failed early
    (UploadError on the first failure, the other files still in flight): the
    test waits for them, or they would write its checkpoint files into the
    next test's moto S3, which is process-wide."""
    before = set(threading.enumerate())
    yield
    from tests.node_agent.helpers import RecordingS3

    RecordingS3.abandon_stalled_uploads()
    for thread in set(threading.enumerate()) - before:
        if thread.name.endswith("(worker)"):
            thread.join(timeout=10)
