"""``make diff BASE=<git ref>``: the infrastructure change between a git ref
and the working tree, with no AWS credentials.

1. Synthesize the base ref (checked out in a temporary ``git worktree``,
   run with this checkout's toolchain: its .venv and node_modules are on
   PATH) and the working tree, in parallel.
2. ``cdk diff <stage>/<stack> --template <base template>`` against the head
   assembly for every stack of every stage (the CLI reads the assembly
   directory and the local template: no synth, no AWS call).
3. Summary table (stage, stack, added / modified / replaced / removed),
   the stateful-replacement guard and the monthly cost delta.

Exit status: 0 when the guard passes, 1 when a stateful resource would be
replaced or removed without an ``Allow-Replace`` trailer, 2 on an error.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from delivery import cost, guard
from delivery.assembly import AssemblyStack, read_assembly
from delivery.changes import ACTIONS, compare_assemblies, count_actions

# Comment bodies on GitHub are limited to 65,536 characters.
MAX_REPORT_CHARS = 60_000
_CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN",
                    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


def offline_env() -> dict[str, str]:
    """The environment without credentials and with every network probe off."""
    env = {k: v for k, v in os.environ.items() if k not in _CREDENTIAL_VARS}
    env.update(AWS_EC2_METADATA_DISABLED="true", CDK_DISABLE_CLI_TELEMETRY="true",
               CDK_DISABLE_VERSION_CHECK="true", NO_COLOR="1", FORCE_COLOR="0",
               PYTHONDONTWRITEBYTECODE="1")
    # Stacks are account-agnostic without an account: do not pin one from
    # the caller's environment on one side only.
    env.pop("CDK_DEFAULT_ACCOUNT", None)
    return env


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _synth(cwd: Path, outdir: Path, stages: str | None, cdk_args: Sequence[str] = ()) -> subprocess.Popen:
    command = ["cdk", "--no-notices", "synth", "--quiet", "-o", str(outdir), *cdk_args]
    if stages:
        command += ["-c", f"stages={stages}"]
    return subprocess.Popen(command, cwd=cwd, env=offline_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def synthesize_both(repo: Path, base_ref: str, workdir: Path, stages: str | None,
                    cdk_args: Sequence[str] = ()) -> tuple[Path, Path]:
    base_tree, base_out, head_out = workdir / "base", workdir / "base.out", workdir / "head.out"
    _git(repo, "worktree", "add", "--detach", "--quiet", str(base_tree), base_ref)
    try:
        # The same context on both sides, so only the change shows.
        jobs = {"base": _synth(base_tree, base_out, stages, cdk_args),
                "head": _synth(repo, head_out, stages, cdk_args)}
        failed = []
        for name, job in jobs.items():
            _, stderr = job.communicate()
            if job.returncode != 0:
                failed.append(f"synth of {name} failed:\n{stderr[-4000:]}")
        if failed:
            raise RuntimeError("\n".join(failed))
    finally:
        _git(repo, "worktree", "remove", "--force", str(base_tree))
    return base_out, head_out


def cdk_diff(head_out: Path, stack: AssemblyStack, base_template: Path) -> str:
    """The CDK CLI's own rendering of the change, offline: the head assembly
    directory as the app and a local file as the deployed template."""
    result = subprocess.run(
        ["cdk", "--no-notices", "diff", "--app", str(head_out), "--exclusively",
         "--fail-on", "never", "--template", str(base_template), stack.display_name],
        env=offline_env(), capture_output=True, text=True, check=False, timeout=300,
    )
    # The CLI writes the diff to stderr outside CI.
    text = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise RuntimeError(f"cdk diff {stack.display_name} failed:\n{text[-4000:]}")
    return text


def summary_table(changes, stacks: list[tuple[str, str]]) -> str:
    rows = [("stage", "stack", *ACTIONS)]
    for stage, stack in stacks:
        counts = count_actions([c for c in changes if (c.stage, c.stack) == (stage, stack)])
        rows.append((stage, stack, *(str(counts[a]) for a in ACTIONS)))
    totals = count_actions(changes)
    rows.append(("total", "", *(str(totals[a]) for a in ACTIONS)))
    return cost._table(rows)


def run(repo: Path, base_ref: str, *, stages: str | None = None,
        allowances: list[str] | None = None, cdk_args: Sequence[str] = ()) -> tuple[int, str, str]:
    """(exit status, console text, markdown report)."""
    with tempfile.TemporaryDirectory(prefix="ml-diff-") as tmp:
        workdir = Path(tmp)
        base_out, head_out = synthesize_both(repo, base_ref, workdir, stages, cdk_args)
        if allowances is None:
            allowances = guard.allowances_from_git(repo, base_ref)
        return diff_assemblies(base_out, head_out, base_label=base_ref, allowances=allowances,
                               workdir=workdir)


def diff_assemblies(base_out: Path, head_out: Path, *, base_label: str, allowances: list[str],
                    workdir: Path) -> tuple[int, str, str]:
    """(exit status, console text, markdown report) of two synthesized assemblies.

    The CDK CLI renders only the stacks whose template changed (a stage of
    200 models is 200 stacks: one ``cdk diff`` process each would take
    minutes to say "no differences"); every stack still has its row in the
    summary table.
    """
    base_stacks = {(s.stage, s.stack): s for s in read_assembly(base_out)}
    head_stacks = {(s.stage, s.stack): s for s in read_assembly(head_out)}
    base_templates = {k: s.template() for k, s in base_stacks.items()}
    head_templates = {k: s.template() for k, s in head_stacks.items()}
    regions = cost.regions_of([base_out, head_out])
    changes = compare_assemblies(base_templates, head_templates, region_of=regions)

    empty = workdir / "empty.template.json"
    empty.write_text(json.dumps({"Resources": {}}))

    def render(key: tuple[str, str]) -> str:
        stack = head_stacks[key]
        if base_templates.get(key) == head_templates[key]:
            return f"Stack {stack.display_name} ({stack.stack_name}): no differences"
        base = base_stacks[key].template_path if key in base_stacks else empty
        return cdk_diff(head_out, stack, base)

    with ThreadPoolExecutor(max_workers=2) as pool:
        rendered = dict(zip(head_stacks, pool.map(render, head_stacks)))
    for key in base_stacks.keys() - head_stacks.keys():
        removed = sorted(c.logical_id for c in changes if (c.stage, c.stack) == key)
        rendered[key] = (f"Stack {'/'.join(key)} ({base_stacks[key].stack_name}) is deleted:"
                         f" {len(removed)} resources removed\n" + "\n".join(f"[-] {r}" for r in removed))

    verdict = guard.check(changes, allowances)
    costs_base = cost.estimate(base_templates, region_of=regions)
    costs_head = cost.estimate(head_templates, region_of=regions)

    order = list(head_stacks) + [k for k in base_stacks if k not in head_stacks]
    summary = summary_table(changes, order)
    delta = cost.format_delta(costs_base, costs_head)
    guard_text = guard.format_result(verdict) or "no stateful resource is replaced or removed"
    status = 0 if verdict.passed else 1
    head_label = "working tree"

    console = "\n\n".join([
        *(rendered[k] for k in order),
        f"Infrastructure change {base_label} -> {head_label}:\n{summary}",
        f"Monthly cost (always-on / max capacity, USD):\n{delta}",
        f"Stateful-replacement guard: {'passed' if verdict.passed else 'FAILED'}\n{guard_text}",
    ])
    markdown = "\n\n".join([
        f"### Infrastructure diff `{base_label}` → head",
        summary,
        "**Monthly cost** (always-on / max capacity, USD)\n\n" + delta,
        f"**Stateful-replacement guard: {'passed' if verdict.passed else 'FAILED'}**\n\n```\n"
        f"{guard_text}\n```",
        *(f"<details><summary>{'/'.join(k)}: "
          f"{', '.join(f'{n} {a}' for a, n in count_actions([c for c in changes if (c.stage, c.stack) == k]).items() if n) or 'no change'}"
          f"</summary>\n\n```\n{rendered[k]}\n```\n</details>" for k in order),
    ])
    if len(markdown) > MAX_REPORT_CHARS:
        markdown = markdown[:MAX_REPORT_CHARS] + "\n```\n\n(truncated: see the job log for the full diff)"
    return status, console, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git ref to compare the working tree with")
    parser.add_argument("--stages", default=None, help="comma-separated stages (default: all)")
    parser.add_argument("--report", type=Path, default=None, help="also write a Markdown report")
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--cdk-args", default="",
                        help='extra arguments for both synths, e.g. "-c eks_public_access_cidrs=203.0.113.0/24"')
    args = parser.parse_args(argv)
    if shutil.which("cdk") is None:
        print("cdk is not on PATH: run through `make diff BASE=...`", file=sys.stderr)
        return 2
    repo = Path(_git(args.repo, "rev-parse", "--show-toplevel"))
    try:
        _git(repo, "rev-parse", "--verify", "--quiet", f"{args.base}^{{commit}}")
    except subprocess.CalledProcessError:
        print(f"BASE={args.base!r} is not a commit in {repo}", file=sys.stderr)
        return 2
    try:
        status, console, markdown = run(repo, args.base, stages=args.stages or None,
                                        cdk_args=shlex.split(args.cdk_args))
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(str(error), file=sys.stderr)
        return 2
    print(console)
    if args.report:
        args.report.write_text(markdown + "\n")
    return status


if __name__ == "__main__":
    from delivery.cli_errors import run as run_command

    sys.exit(run_command(main))
