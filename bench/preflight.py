"""``make bench-preflight``: preflight of every stage against a freshly
created account (moto, plus answers for what moto lacks), and the quota
needs of every stage.

What the fresh account answers where moto has nothing (documented new-account
values; AWS sets them per account and region, so a real account may differ):
- EC2 vCPU quotas: G and VT / P on-demand and spot 0 (GPU quotas of a new
  account, observed on accounts created in 2026); Standard on-demand 32.
- SageMaker: 0 for every GPU endpoint-usage quota, 2 for ml.m5.large.
- EKS: 100 clusters, 30 managed node groups per cluster, 450 nodes per
  group (the EKS defaults); no cluster yet.
- Lambda: concurrency limit 10, unreserved 10 (new accounts: 10 to 50).
- EKS add-on versions: kube-proxy builds v1.34.1-eksbuild.2 and later (the
  EKS add-on table); the other three pins as listed.
- Cost Explorer: the Environment tag was never seen.
The AMI pins and the CDK bootstrap stack are what the account really lacks.

    python bench/preflight.py --assembly cdk.out [--stages dev,prod]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delivery.preflight import STATUSES  # noqa: E402
from delivery.preflight.__main__ import render, render_quotas  # noqa: E402
from delivery.preflight.runner import run_checks  # noqa: E402
from ml_stacks.config import default_configs  # noqa: E402
from tests.delivery.preflight_world import FreshAccount, fresh_account  # noqa: E402


def new_account() -> FreshAccount:
    return FreshAccount(
        quotas={"L-DB2E81BA": 0, "L-3819A6DF": 0, "L-417A185B": 0, "L-7212CCBC": 0,
                "L-1216C47A": 32, "L-34B43A08": 32,
                "L-1194D53C": 100, "L-6D54EA21": 30, "L-BD136A63": 450},
        sagemaker_quotas={"ml.m5.large for endpoint usage": 2, "ml.g5.xlarge for endpoint usage": 0,
                          "ml.g6.xlarge for endpoint usage": 0},
        lambda_limit=10, lambda_unreserved=10,
        addon_versions={"vpc-cni": ["v1.20.4-eksbuild.1"], "coredns": ["v1.12.4-eksbuild.1"],
                        "kube-proxy": ["v1.34.1-eksbuild.2", "v1.34.2-eksbuild.1"],
                        "eks-pod-identity-agent": ["v1.3.8-eksbuild.2"]},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assembly", default="cdk.out")
    parser.add_argument("--stages", default="dev,staging,prod")
    args = parser.parse_args(argv)
    configs = default_configs()
    totals = {}
    for stage in args.stages.split(","):
        with fresh_account(new_account(), region=configs[stage].region) as (client, calls):
            rows = run_checks(configs[stage], assembly_dir=args.assembly, client=client,
                              session_region=configs[stage].region)
        table, summary = render(rows, stage=stage)
        print(f"## preflight {stage} on a fresh moto account\n\n{table}\n{summary}")
        print(f"   AWS calls: {len(calls)}, operations: "
              + ", ".join(sorted(collections.Counter(c.split(':')[1] for c in calls))))
        totals[stage] = {s: sum(r.status == s for r in rows) for s in STATUSES}
        print(f"\n## quota needs of {stage}\n\n{render_quotas(stage)}\n")
    print("## totals")
    for stage, counts in totals.items():
        print(f"{stage:<8} " + "  ".join(f"{s} {counts[s]}" for s in STATUSES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
