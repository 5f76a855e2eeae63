"""install.sh in a scratch root: env file, systemd unit, systemctl calls, and its failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NODE_AGENT = Path(__file__).resolve().parents[2] / "node_agent"

CONTRACT_VARS = {
    "ML_CHECKPOINT_BUCKET": "ml-dev-checkpoints-abc123",
    "ML_CHECKPOINT_DIR": "/opt/ml/checkpoints",
    "ML_CHECKPOINT_DONE_MARKER": "CHECKPOINT_DONE",
    "ML_TRAINING_SIGNAL": "SIGUSR1",
    "ML_CHECKPOINT_BUDGET_SECONDS": "90",
    "ML_HEARTBEAT_SECONDS": "30",
    "ML_AUTOSCALING_GROUP_NAME": "ml-dev-training-Fleet-1A2B3C",
    "ML_LIFECYCLE_HOOK_NAME": "ml-dev-training-terminate",
    "AWS_REGION": "us-east-1",
    "ML_STAGE": "dev",
    "ML_RUNS_TABLE": "ml-dev-training-RunsTable1A2B3C-XYZ",
    "ML_RUNS_LOG_GROUP": "/ml/dev/runs",
    "ML_ALERTS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:ml-dev-alerts",
}
UNITS = ("ml-node-agent.service", "ml-node-agent-runs.service")


class Root:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path
        self.prefix = tmp_path / "opt" / "ml-node-agent"
        self.env_file = tmp_path / "etc" / "ml-node-agent.env"
        self.systemd_dir = tmp_path / "etc" / "systemd" / "system"
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.systemctl_log = tmp_path / "systemctl.log"
        shim = self.bin / "systemctl"
        shim.write_text(f'#!/bin/sh\necho "$*" >> "{self.systemctl_log}"\n')
        shim.chmod(0o755)

    @property
    def unit(self) -> Path:
        return self.systemd_dir / "ml-node-agent.service"

    @property
    def runs_unit(self) -> Path:
        return self.systemd_dir / "ml-node-agent-runs.service"

    def run(self, variables: dict, python: str = sys.executable,
            script: Path = NODE_AGENT / "install.sh") -> subprocess.CompletedProcess:
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "ML_AGENT_PREFIX": str(self.prefix),
            "ML_ENV_FILE": str(self.env_file),
            "ML_SYSTEMD_DIR": str(self.systemd_dir),
            "ML_AGENT_PYTHON": python,
            **variables,
        }
        return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                              timeout=60)

    def systemctl_calls(self) -> list:
        return self.systemctl_log.read_text().splitlines() if self.systemctl_log.exists() else []


@pytest.fixture
def root(tmp_path):
    return Root(tmp_path)


def test_install_writes_the_env_file_both_units_and_starts_them(agent, root):
    result = root.run(CONTRACT_VARS)
    assert result.returncode == 0, result.stderr
    assert agent.read_env_file(root.env_file) == CONTRACT_VARS
    for path, command in ((root.unit, "watch"), (root.runs_unit, "run")):
        unit = path.read_text()
        assert f"EnvironmentFile={root.env_file}\n" in unit
        assert f"ExecStart={sys.executable} {root.prefix}/ml_node_agent.py {command}\n" in unit
        assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    assert "After=network-online.target docker.service" in root.runs_unit.read_text()
    assert os.access(root.prefix / "ml_node_agent.py", os.X_OK)
    assert root.systemctl_calls() == ["daemon-reload", "enable " + " ".join(UNITS), "restart " + " ".join(UNITS)]


def test_install_writes_optional_run_settings_only_when_given(agent, root):
    assert root.run({**CONTRACT_VARS, "ML_LEASE_SECONDS": "60", "ML_GPU_COUNT": "4", "ML_HUNG_AFTER_SECONDS": "1800",
                     "ML_HUNG_ACTION": "restart"}).returncode == 0
    written = agent.read_env_file(root.env_file)
    assert (written["ML_LEASE_SECONDS"], written["ML_GPU_COUNT"]) == ("60", "4")
    assert (written["ML_HUNG_AFTER_SECONDS"], written["ML_HUNG_ACTION"]) == ("1800", "restart")
    assert "ML_TRAINER_LAUNCHER" not in written and "ML_EVENT_BUS_NAME" not in written


def test_install_validates_optional_settings_with_the_agent_rules(root):
    result = root.run({**CONTRACT_VARS, "ML_TRAINER_LAUNCHER": "podman"})
    assert result.returncode != 0
    assert "ML_TRAINER_LAUNCHER='podman' is not one of docker, process" in result.stderr
    assert root.systemctl_calls() == []


def test_installed_env_file_is_a_complete_agent_config(agent, root):
    assert root.run(CONTRACT_VARS).returncode == 0
    config = agent.Config.from_env(agent.merged_environment({"ML_ENV_FILE": str(root.env_file)}))
    assert config.bucket == CONTRACT_VARS["ML_CHECKPOINT_BUCKET"]
    assert config.lifecycle_hook_name == CONTRACT_VARS["ML_LIFECYCLE_HOOK_NAME"]
    assert config.budget_seconds == 90


def test_install_is_idempotent(root):
    assert root.run(CONTRACT_VARS).returncode == 0
    first = (root.env_file.read_text(), root.unit.read_text())
    assert root.run(CONTRACT_VARS).returncode == 0
    assert (root.env_file.read_text(), root.unit.read_text()) == first
    assert root.runs_unit.exists()


@pytest.mark.parametrize(("unit", "command"), [("ml-node-agent.service", "watch"),
                                              ("ml-node-agent-runs.service", "run")])
def test_shipped_units_match_the_default_install_paths(unit, command):
    text = (NODE_AGENT / unit).read_text()
    assert "EnvironmentFile=/etc/ml-node-agent.env\n" in text
    assert f"ExecStart=/usr/bin/python3 /opt/ml-node-agent/ml_node_agent.py {command}\n" in text
    assert "Restart=always" in text


@pytest.mark.parametrize("missing", sorted(CONTRACT_VARS))
def test_install_fails_naming_a_missing_variable(root, missing):
    variables = {k: v for k, v in CONTRACT_VARS.items() if k != missing}
    result = root.run(variables)
    assert result.returncode != 0
    assert missing in result.stderr
    assert not root.env_file.exists() and not root.unit.exists()
    assert root.systemctl_calls() == []


def test_install_fails_naming_every_missing_variable_at_once(root):
    result = root.run({k: v for k, v in CONTRACT_VARS.items() if k not in ("AWS_REGION", "ML_RUNS_TABLE")})
    assert result.returncode != 0
    assert "ML_RUNS_TABLE" in result.stderr and "AWS_REGION" in result.stderr


def test_install_treats_an_empty_variable_as_missing(root):
    result = root.run({**CONTRACT_VARS, "ML_CHECKPOINT_BUCKET": ""})
    assert result.returncode != 0 and "ML_CHECKPOINT_BUCKET" in result.stderr


def test_install_rejects_a_non_numeric_budget(root):
    result = root.run({**CONTRACT_VARS, "ML_CHECKPOINT_BUDGET_SECONDS": "90s"})
    assert result.returncode != 0
    assert "ML_CHECKPOINT_BUDGET_SECONDS=90s is not a whole number of seconds" in result.stderr


def test_install_validates_with_the_agent_rules_before_starting(root):
    result = root.run({**CONTRACT_VARS, "ML_TRAINING_SIGNAL": "SIGWHATEVER"})
    assert result.returncode != 0
    assert "ML_TRAINING_SIGNAL='SIGWHATEVER' is not a signal name" in result.stderr
    assert not root.env_file.exists() and root.systemctl_calls() == []


def test_install_fails_when_python_lacks_boto3(root, tmp_path):
    fake_python = tmp_path / "python-without-boto3"
    fake_python.write_text("#!/bin/sh\nexit 1\n")
    fake_python.chmod(0o755)
    result = root.run(CONTRACT_VARS, python=str(fake_python))
    assert result.returncode != 0
    assert "is not Python 3.9+ with boto3" in result.stderr


def test_install_quotes_values_so_they_round_trip(agent, root):
    variables = {**CONTRACT_VARS, "ML_CHECKPOINT_DIR": '/data/my "run" dir\\x'}
    assert root.run(variables).returncode == 0
    assert agent.read_env_file(root.env_file)["ML_CHECKPOINT_DIR"] == '/data/my "run" dir\\x'


def test_install_from_the_unzipped_asset_in_place_restores_the_executable_bit(root):
    # User data unzips the asset into the prefix and runs install.sh from there; zips drop modes.
    root.prefix.mkdir(parents=True)
    for name in ("ml_node_agent.py", *UNITS, "install.sh"):
        target = root.prefix / name
        target.write_bytes((NODE_AGENT / name).read_bytes())
        target.chmod(0o644)
    result = root.run(CONTRACT_VARS, script=root.prefix / "install.sh")
    assert result.returncode == 0, result.stderr
    assert os.access(root.prefix / "ml_node_agent.py", os.X_OK)
    assert f"ExecStart={sys.executable} {root.prefix}/ml_node_agent.py watch" in root.unit.read_text()


def test_install_rejects_a_relative_install_path(root):
    result = root.run({**CONTRACT_VARS, "ML_SYSTEMD_DIR": "etc/systemd/system"})
    assert result.returncode != 0 and "must be absolute" in result.stderr
