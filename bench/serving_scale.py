#!/usr/bin/env python3
"""Serving at scale (a benchmark, not a test: it never fails on speed).

Measures, on this machine, each synth in a fresh Python process:

  * synth time of one stage (dev) serving 1, 50 and 200 models, and the
    resources of its serving stacks (the shared one, and per model stack);
  * synth time of the whole app (every stage) as the repository configures
    it, and with dev serving 200 models; and the whole app of ``--base-ref``
    (default ``main``: the code before one stack per model), which cannot
    synthesize 200 models at all (one stack, 500 resources);
  * what the offline diff of ``make diff`` reports when one of 200 models
    moves to a new version: the stacks changed, and how long the report took.

    make bench-serving               # or: python bench/serving_scale.py --models 1 50 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Runs in a fresh interpreter: synthesizes and prints {"seconds": ...}.
_SYNTH = """
import json, sys, time
sys.path.insert(0, {root!r})
from ml_stacks.app_factory import build_app
from ml_stacks.config import default_configs
configs = default_configs()
models = {models!r}
if models is not None:
    # By path: a --base-ref checkout has no tests/serving_scale.py of its own.
    import importlib.util
    spec = importlib.util.spec_from_file_location("serving_scale", {scale!r})
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    configs["dev"] = scale.with_models(configs["dev"], models)
    if {bump!r}:
        configs["dev"] = scale.with_new_version(configs["dev"], {bump!r})
selected = [configs[name] for name in {stages!r}] if {stages!r} else list(configs.values())
start = time.perf_counter()
build_app(selected, outdir={outdir!r}).synth()
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def synth(outdir: Path, *, models: int | None, stages: list[str] | None, bump: str | None = None,
          root: Path = ROOT) -> float:
    """Seconds ``build_app(...).synth()`` took (jsii start-up and imports excluded)."""
    code = _SYNTH.format(root=str(root), models=models, stages=stages, outdir=str(outdir), bump=bump,
                         scale=str(ROOT / "tests" / "serving_scale.py"))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "synth failed")
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def serving_resources(outdir: Path) -> tuple[int, list[int]]:
    """(resources of the shared serving stack, resources of each model stack)."""
    from delivery.assembly import read_assembly

    shared, per_model = 0, []
    for stack in read_assembly(outdir):
        if stack.stack == "serving":
            shared = len(stack.template()["Resources"])
        elif stack.stack.startswith("serving-"):
            per_model.append(len(stack.template()["Resources"]))
    return shared, per_model


def base_checkout(ref: str, into: Path) -> Path:
    """The files of ``ref`` (git archive), run with this checkout's .venv and node_modules."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def stage_scale(counts: list[int], work: Path) -> dict[int, Path]:
    print("one stage (dev), N models: synth seconds; resources of the shared serving stack and per model stack")
    outdirs = {}
    for count in counts:
        outdir = outdirs[count] = work / f"dev-{count}"
        seconds = synth(outdir, models=count, stages=["dev"])
        shared, per_model = serving_resources(outdir)
        print(f"  {count:>4} models  {seconds:7.1f} s  shared {shared}, per model "
              f"min {min(per_model)} / max {max(per_model)} / total {sum(per_model)} in {len(per_model)} stacks")
    return outdirs


def whole_app(largest: int, base_ref: str, work: Path) -> None:
    print("whole app (every stage): synth seconds")
    today = synth(work / "app-today", models=None, stages=None)
    print(f"  as configured (one model a stage)   {today:7.1f} s")
    large = synth(work / f"app-{largest}", models=largest, stages=None)
    print(f"  dev with {largest} models              {large:7.1f} s")
    base = base_checkout(base_ref, work / "base")
    base_today = synth(work / "base-today", models=None, stages=None, root=base)
    print(f"  {base_ref} as configured            {base_today:7.1f} s")
    try:
        synth(work / f"base-{largest}", models=largest, stages=["dev"], root=base)
        print(f"  {base_ref}, dev with {largest} models: synthesized")
    except RuntimeError as error:
        print(f"  {base_ref}, dev with {largest} models: fails: {error}")


def one_version(base_out: Path, count: int, work: Path) -> None:
    import shutil

    from delivery import guard, offline_diff
    from delivery.assembly import read_assembly, templates_by_stack
    from delivery.changes import compare_assemblies

    bumped = f"model-{count // 2:03d}"
    head_out = work / f"dev-{count}-bumped"
    synth(head_out, models=count, stages=["dev"], bump=bumped)
    base, head = templates_by_stack(base_out), templates_by_stack(head_out)
    changed = sorted("/".join(k) for k in head if base.get(k) != head[k])
    start = time.perf_counter()
    if shutil.which("cdk") is not None:
        status, console, _ = offline_diff.diff_assemblies(
            base_out, head_out, base_label=f"{count} models", allowances=[], workdir=work)
        how = "report with the CDK CLI's diff of the changed stacks"
    else:
        # No CDK CLI on this machine: the same summary and guard make diff
        # prints, without the CLI's rendering of the changed stack.
        changes = compare_assemblies(base, head)
        order = [(s.stage, s.stack) for s in read_assembly(head_out)]
        verdict = guard.check(changes, [])
        status, console = (0 if verdict.passed else 1), offline_diff.summary_table(changes, order)
        how = "summary and guard (no cdk CLI on PATH: rendering skipped)"
    seconds = time.perf_counter() - start
    rows = [line for line in console.splitlines() if line.startswith("| dev ")
            and any(cell.strip() not in ("0", "") for cell in line.split("|")[3:-1])]
    print(f"make diff when {bumped} of {count} models moves to v2: {len(changed)} of {len(head)} stacks "
          f"changed ({', '.join(changed)}); {how} in {seconds:.1f} s, guard exit {status}")
    for row in rows:
        print(f"  {row}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--base-ref", default="main", help="code to compare the whole app with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serving-scale-") as tmp:
        work = Path(tmp)
        outdirs = stage_scale(args.models, work)
        largest = max(args.models)
        whole_app(largest, args.base_ref, work)
        one_version(outdirs[largest], largest, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
