"""`CONTEXT="-c ..."` reaches the CDK CLI of every make target the docs say it does
(docs/deploying.md, docs/configuration.md), read from make's dry run, and the
offline diff passes it to both of its synths."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from delivery import offline_diff
from tests.docs.test_readme_commands import _env, _stamp_names
from tests.docs.markdown import PROJECT_ROOT

CONTEXT = "-c eks_public_access_cidrs=203.0.113.0/24"


def dry_run(*args: str) -> list[str]:
    """The commands make would run, continuation lines joined."""
    result = subprocess.run(["make", "-n", "--no-print-directory", *(f"--old-file={s}" for s in _stamp_names()),
                             *args, f"CONTEXT={CONTEXT}"],
                            cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.replace("\\\n", " ").splitlines()


@pytest.mark.parametrize("target, cli", [
    (["synth"], "cdk --no-notices synth"),
    (["cost", "STAGES=dev"], "cdk --no-notices synth"),
    (["diff", "STAGE=dev"], "cdk --no-notices diff"),
    (["preflight", "STAGE=dev"], "cdk --no-notices synth"),
    (["deploy", "STAGE=dev"], "cdk --no-notices synth"),  # deploy ships the assembly preflight synthesized
    (["cdk", "ARGS=ls"], "cdk --no-notices ls"),
    (["diff", "BASE=HEAD"], "python -m delivery.offline_diff"),
])
def test_context_reaches_the_cli(target, cli) -> None:
    invocations = [line for line in dry_run(*target) if cli in line]
    assert invocations and all(CONTEXT in line for line in invocations), invocations


def test_without_context_nothing_is_added() -> None:
    result = subprocess.run(["make", "-n", "--no-print-directory", *(f"--old-file={s}" for s in _stamp_names()),
                             "synth"], cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True, timeout=60,
                            check=True)
    assert "eks_public_access_cidrs" not in result.stdout


def test_offline_diff_synthesizes_both_sides_with_the_same_arguments(monkeypatch, tmp_path) -> None:
    commands = []

    class Job:
        returncode = 0

        def communicate(self):
            return "", ""

    monkeypatch.setattr(offline_diff.subprocess, "Popen", lambda command, **_: commands.append(command) or Job())
    monkeypatch.setattr(offline_diff, "_git", lambda *args: "")
    offline_diff.synthesize_both(tmp_path, "HEAD", tmp_path, "dev", shlex.split(CONTEXT))
    assert len(commands) == 2
    assert all(c[-4:] == ["-c", "eks_public_access_cidrs=203.0.113.0/24", "-c", "stages=dev"] for c in commands)
