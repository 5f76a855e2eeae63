"""Every command of the README's quick start and command table, run as written.

Offline commands run in a scratch directory that links to this checkout (so
`cdk.out`, `model.tar.gz` and friends land there, not in the repository);
`make synth` runs once, and what reads its output runs on it in the same test.
Commands that need AWS credentials are run without any and must fail with
the one-line credentials error. What is not run here says why, visibly.

Benchmarks run with their smallest workload: the test proves that the
documented command works and prints its report, not its figures.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.docs.markdown import PROJECT_ROOT, fenced_blocks

README = PROJECT_ROOT / "README.md"
NO_CREDENTIALS = "error: no AWS credentials found: set AWS_PROFILE"

# Documented command -> (what this test runs, text its stdout must contain).
# The run differs from the documented form only by the optional arguments
# the table shows in brackets, or by a smaller workload for a benchmark.
SYNTH = ("make synth", "cdk-nag AwsSolutions: passed")
# Run on the output of SYNTH, in the same test.
READS_SYNTH = {
    ".venv/bin/python bench/interruption_budget.py [--assembly cdk.out]":
        (".venv/bin/python bench/interruption_budget.py --assembly cdk.out", '"worst_case_retry_s"'),
}
RUN = {
    'make bench-drill [ARGS="--checkpoint-mib 0 256"]':
        ('make bench-drill ARGS="--checkpoint-mib 0 --steps 100"', "run SUCCEEDED"),
    ".venv/bin/python bench/interruption_handler.py":
        (".venv/bin/python bench/interruption_handler.py --records 40", "duplicate delivery"),
    ".venv/bin/python bench/interruption_storm.py [--hooks]":
        (".venv/bin/python bench/interruption_storm.py --hooks --notices 10", '"seed"'),
    "make bench-idle": ('make bench-idle ARGS="--runs 1 --imports 1 --fleets 100"', "import handler"),
    "make cost [STAGES=dev]": ("make cost STAGES=dev", "always-on"),
    ".venv/bin/python -m delivery.preflight --stage prod --quotas":
        (".venv/bin/python -m delivery.preflight --stage prod --quotas", "L-"),
    ".venv/bin/python -m ml_stacks.example_models build sentiment --out model.tar.gz":
        (".venv/bin/python -m ml_stacks.example_models build sentiment --out model.tar.gz", ""),
    'make cdk ARGS="ls -c stages=dev"': ('make cdk ARGS="ls -c stages=dev"', "dev/network"),
}

# Offline commands this test does not run, and why.
NOT_RUN = {
    "make test": "the suite itself: this test runs inside it",
    "make test [ARGS=...]": "the suite itself: this test runs inside it",
    "make bench": "times `make synth` three times for all stages and three for dev (about 100 s on "
                  "2 CPUs); `make synth` itself runs here",
    "make diff BASE=origin/main [STAGES=dev] [REPORT=diff.md]":
        "run end to end by tests/delivery/test_make_diff.py (make diff BASE=HEAD STAGES=dev REPORT=diff.md "
        "on a copy of this checkout with a real change)",
    "make test-config-change [ARGS=...]": "the suite again on the configs with the docs' two example "
                                          "changes (minutes); CI runs it as its own step",
    "make test-fast [CHANGED=HEAD] [SCOPE=all]": "a part of this suite, which runs inside it",
    "make bench-tests [ARGS=--fast]": "runs make test three times (minutes); --fast runs make test-fast "
                                      "six times, each a part of this suite",
    "make test-scale": "minutes: a 200-model stage through every gate; CI runs it as its own step",
    "make acknowledgements": "rewrites tests/unit/acknowledgements.txt; tests/unit/test_acknowledgements.py "
                             "checks the list equals what it would write, on the session synth",
    "make iam-report": "make synth and then python -m delivery.iam_report cdk.out, whose counts "
                       "tests/unit/test_acknowledgements.py checks on the session synth",
    "make bench-serving": "synthesizes dev with 1, 50 and 200 models (minutes); "
                          "tests/unit/test_serving_scale.py synthesizes the 200-model stage",
    "make bench-preflight": "synthesizes every stage again, then preflights all three on moto (about 45 s); "
                            "tests/delivery/test_preflight_cli.py runs the same preflight on a fresh moto account",
}
# The quick start's `make synth` and the table's `make synth [STAGES=dev,prod]`
# are one command: it runs once.
SYNTH_FORMS = {"make synth", "make synth [STAGES=dev,prod]"}


def readme_commands() -> dict[str, bool]:
    """{command: needs AWS credentials} of the quick start and the command table."""
    text = README.read_text()
    commands = {}
    for line in fenced_blocks(text, "sh")[0].splitlines():
        if line.split("#")[0].strip():
            commands[line.split("#")[0].strip()] = False
    table = text.split("\n## Commands\n", 1)[1].strip().split("\n\n", 1)[0]
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        command = re.fullmatch(r"`(.+)`", cells[0])
        assert command, f"a command table row without its command in code: {row}"
        commands[command.group(1)] = cells[-1].startswith("yes")
    return commands


COMMANDS = readme_commands()
NEEDS_CREDENTIALS = sorted(c for c, needs in COMMANDS.items() if needs)


def test_every_readme_command_is_run_or_says_why_not() -> None:
    offline = {c for c, needs in COMMANDS.items() if not needs}
    assert len(COMMANDS) >= 20 and "make synth" in COMMANDS and "make test" in COMMANDS
    run_here = SYNTH_FORMS | set(READS_SYNTH) | set(RUN)
    assert offline == run_here | set(NOT_RUN)
    assert not run_here & set(NOT_RUN)


def test_the_skipped_make_diff_is_run_by_the_test_that_says_so() -> None:
    text = (PROJECT_ROOT / "tests" / "delivery" / "test_make_diff.py").read_text()
    assert '["make", "diff", "BASE=HEAD", "STAGES=dev", "REPORT=diff.md"]' in text
    assert "fresh_account(new_account())" in (PROJECT_ROOT / "tests" / "delivery" / "test_preflight_cli.py").read_text()


def _stamp_names() -> list[str]:
    """The Makefile's setup stamps: named so that make skips setup here."""
    def digest(*names: str) -> str:
        return hashlib.sha256(b"".join((PROJECT_ROOT / n).read_bytes() for n in names)).hexdigest()[:16]
    return [f".venv/.stamp-{digest('requirements.txt', 'requirements-dev.txt')}",
            f"node_modules/.stamp-{digest('package.json', 'package-lock.json')}"]


# The Makefile's own variables (ARGS, STAGES, ...): `make test ARGS=...` puts them
# in the environment, where the commands run here would pick them up.
MAKE_VARIABLES = frozenset(re.findall(r"^(\w+) \?=", (PROJECT_ROOT / "Makefile").read_text(), re.M))


def _env(*, credentials_removed: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS")) and k not in MAKE_VARIABLES}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    if credentials_removed:
        env = {k: v for k, v in env.items() if not k.startswith(("AWS_", "CDK_DEFAULT_"))}
        env.update(AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   AWS_EC2_METADATA_DISABLED="true")
    return env


def run(command: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    if argv[0] == "make":
        # Setup belongs to `make test`, which started this suite: a test never
        # installs anything (-o: treat the stamps as current).
        argv[1:1] = ["--no-print-directory", *(f"--old-file={s}" for s in _stamp_names())]
    return subprocess.run(argv, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=600, check=False)


@pytest.fixture
def scratch(tmp_path) -> Path:
    """A directory that looks like the checkout: links to every entry of it."""
    for entry in PROJECT_ROOT.iterdir():
        if entry.name not in {"cdk.out", "model.tar.gz", ".git"}:
            (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def _assert_ran(result: subprocess.CompletedProcess, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert expected in result.stdout, result.stdout[-3000:]


@pytest.mark.slow  # the whole app through the CDK CLI
def test_make_synth_and_what_reads_its_output(scratch) -> None:
    _assert_ran(run(SYNTH[0], scratch), SYNTH[1])
    assert sorted(p.name for p in (scratch / "cdk.out").glob("assembly-*"))
    for command, expected in READS_SYNTH.values():
        _assert_ran(run(command, scratch), expected)


@pytest.mark.slow  # make, the CDK CLI or a benchmark: seconds each
@pytest.mark.parametrize("documented", sorted(RUN))
def test_offline_command_runs(documented, scratch) -> None:
    command, expected = RUN[documented]
    _assert_ran(run(command, scratch), expected)
    if "--out model.tar.gz" in command:
        assert (scratch / "model.tar.gz").stat().st_size > 0


def _runnable(documented: str) -> str:
    """A credentials command as a user types it: brackets dropped, SPEC a real file."""
    command = re.sub(r" \[[^]]*\]", "", documented)
    return command.replace("submit SPEC", "submit examples/runs/example-trainer.json")


@pytest.mark.parametrize("documented", NEEDS_CREDENTIALS)
def test_credentials_command_fails_in_one_line_without_credentials(documented) -> None:
    result = run(_runnable(documented), PROJECT_ROOT, credentials_removed=True)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(NO_CREDENTIALS), output


def test_the_commands_run_without_the_callers_make_variables(monkeypatch) -> None:
    assert {"ARGS", "STAGES", "STAGE", "CONTEXT"} <= MAKE_VARIABLES
    monkeypatch.setenv("ARGS", "-q")
    assert "ARGS" not in _env() and "ARGS" not in _env(credentials_removed=True)


def test_the_table_reader_sees_the_credentials_column() -> None:
    assert COMMANDS["make deploy STAGE=dev"] is True
    assert COMMANDS["make synth [STAGES=dev,prod]"] is False
    assert _runnable('make smoke STAGE=dev [ARGS="--wait-seconds 1800"]') == "make smoke STAGE=dev"
