"""`make diff BASE=<ref>` end to end, offline, on a copy of this checkout.

The copy is committed as the base, then gets a tiny config change in its
working tree (dev: one more NAT gateway, longer flow-log retention). No
credentials, and every AWS endpoint and proxy points at a closed port: a
network call would fail the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ml_stacks.app_factory import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.gate("offline make diff")]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("checkout")
    files = subprocess.run(["git", "-C", str(PROJECT_ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = PROJECT_ROOT / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    # Same toolchain, not a second install.
    for tool_dir in (".venv", "node_modules"):
        (repo / tool_dir).symlink_to(PROJECT_ROOT / tool_dir)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@example.com",
                        *args], check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-q", "-m", "base")
    config = repo / "ml_stacks" / "config" / "stages.py"
    text = config.read_text()
    dev_network = ('availability_zones=("us-east-1a", "us-east-1b"),\n            nat_gateways=1,')
    assert text.count(dev_network) == 1 and text.count("flow_log_retention_days=30,") == 1
    config.write_text(text.replace(dev_network, dev_network.replace("nat_gateways=1", "nat_gateways=2"))
                      .replace("flow_log_retention_days=30,", "flow_log_retention_days=60,"))
    return repo


def _offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_DEFAULT_"))}
    closed = "http://127.0.0.1:9"
    env.update(AWS_ENDPOINT_URL=closed, HTTPS_PROXY=closed, HTTP_PROXY=closed, https_proxy=closed,
               http_proxy=closed, NO_PROXY="", AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    env.pop("MAKEFLAGS", None)
    return env


@pytest.fixture(scope="module")
def diff_run(checkout) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "diff", "BASE=HEAD", "STAGES=dev", "REPORT=diff.md"], cwd=checkout,
                          env=_offline_env(), capture_output=True, text=True, check=False, timeout=600)


def _row(text: str, stage: str, stack: str) -> list[int]:
    match = re.search(rf"^\| {stage}\s+\| {stack}\s+\|(.*)\|$", text, re.MULTILINE)
    assert match, text
    return [int(cell) for cell in match.group(1).split("|")]


def test_summary_counts_the_tiny_change(diff_run) -> None:
    assert diff_run.returncode == 0, diff_run.stdout[-3000:] + diff_run.stderr[-3000:]
    out = diff_run.stdout
    #                        added modified replaced removed
    # NAT gateway + its EIP; route of the 2nd private subnet to the new NAT,
    # and the flow-log group's retention.
    assert _row(out, "dev", "network") == [2, 2, 0, 0]
    assert _row(out, "dev", "storage") == [0, 0, 0, 0]
    assert _row(out, "dev", "ops") == [0, 0, 0, 0]
    assert "Stateful-replacement guard: passed" in out


def test_cdk_diff_output_and_cost_delta_are_in_the_report(diff_run, checkout) -> None:
    out = diff_run.stdout
    assert "[+] AWS::EC2::NatGateway" in out
    assert "Stack dev/network (ml-dev-network)" in out
    # One more NAT gateway: 730 h x $0.045, always on and at max capacity.
    [cost_row] = [line for line in out.splitlines() if line.startswith("| dev ") and "$" in line]
    assert cost_row.count("| +$32.85 |") == 2, cost_row
    report = (checkout / "diff.md").read_text()
    assert report.startswith("### Infrastructure diff `HEAD`")
    assert "<details><summary>dev/network: 2 added, 2 modified</summary>" in report


def test_the_temporary_worktree_is_removed(diff_run, checkout) -> None:
    worktrees = subprocess.run(["git", "-C", str(checkout), "worktree", "list"], capture_output=True,
                               text=True, check=True).stdout.splitlines()
    assert len(worktrees) == 1


def test_diff_without_base_or_stage_explains_both(checkout) -> None:
    result = subprocess.run(["make", "diff"], cwd=checkout, env=_offline_env(), capture_output=True,
                            text=True, check=False, timeout=120)
    assert result.returncode == 2
    assert "make diff BASE=<git ref> (offline) or make diff STAGE=<stage>" in result.stderr
