"""``make bench-preflight``: preflight of every stage against a freshly
created account (moto, plus answers for what moto lacks), and the quota
needs of every stage.

What the fresh account answers where moto has nothing is
``tests.delivery.preflight_world.new_account`` (documented there).

    python bench/preflight.py --assembly cdk.out [--stages dev,prod]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery.cli_errors import run  # noqa: E402
from delivery.preflight import STATUSES  # noqa: E402
from delivery.preflight.__main__ import render, render_quotas  # noqa: E402
from delivery.preflight.runner import run_checks  # noqa: E402
from ml_stacks.config import default_configs  # noqa: E402
from tests.delivery.preflight_world import fresh_account, new_account  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assembly", default="cdk.out")
    parser.add_argument("--stages", default="dev,staging,prod")
    args = parser.parse_args(argv)
    configs = default_configs()
    totals = {}
    for stage in args.stages.split(","):
        with fresh_account(new_account(), region=configs[stage].region) as (client, calls):
            started = time.perf_counter()
            rows = run_checks(configs[stage], assembly_dir=args.assembly, client=client,
                              session_region=configs[stage].region)
            elapsed = time.perf_counter() - started
        table, summary = render(rows, stage=stage)
        print(f"## preflight {stage} on a fresh moto account\n\n{table}\n{summary}")
        print(f"   {elapsed:.2f} s against moto; AWS calls: {len(calls)}, operations: "
              + ", ".join(sorted(collections.Counter(c.split(':')[1] for c in calls))))
        totals[stage] = {s: sum(r.status == s for r in rows) for s in STATUSES}
        print(f"\n## quota needs of {stage}\n\n{render_quotas(stage)}\n")
    print("## totals")
    for stage, counts in totals.items():
        print(f"{stage:<8} " + "  ".join(f"{s} {counts[s]}" for s in STATUSES))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
