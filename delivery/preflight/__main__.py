"""``python -m delivery.preflight --stage dev [--assembly cdk.out] [--account ID]``

Read-only checks of the account a stage is about to be deployed into; one
line per check, a summary line, exit status 1 on any FAIL. ``--quotas``
prints what the stage needs of each quota (no credentials needed).
``make preflight STAGE=<stage>`` synthesizes the stage first and runs this.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from delivery.cli_errors import UserError, run
from delivery.preflight import FAIL, STATUSES, Result
from ml_stacks.config import default_configs


def render(rows: Sequence[Result], *, stage: str) -> tuple[str, str]:
    """(table, summary line)."""
    width = max((len(r.check) for r in rows), default=0)
    lines = []
    for row in rows:
        line = f"{row.status}  {row.check:<{width}}  {row.figure}"
        lines.append(line + (f"  -> fix: {row.fix}" if row.fix else ""))
    counts = {s: sum(1 for r in rows if r.status == s) for s in STATUSES}
    verdict = "deploy blocked" if counts[FAIL] else "ready to deploy"
    summary = (f"preflight {stage}: {len(rows)} checks, "
               + ", ".join(f"{counts[s]} {s}" for s in STATUSES) + f" — {verdict}")
    return "\n".join(lines), summary


def render_quotas(stage: str) -> str:
    from delivery.preflight.quotas import quota_needs, quota_table

    rows = [("service", "code", "quota", "at deploy", "at max capacity"),
            *quota_table(quota_needs(default_configs()[stage]))]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _client_factory(region: str):
    import boto3

    session = boto3.Session()
    clients: dict[str, object] = {}

    def client(service: str, in_region: str | None = None):
        key = f"{service}@{in_region or region}"
        if key not in clients:
            clients[key] = session.client(service, region_name=in_region or region)
        return clients[key]

    return client, session.region_name


def main(argv: list[str] | None = None) -> int:
    configs = default_configs()
    parser = argparse.ArgumentParser(description="Read-only checks before deploying a stage")
    parser.add_argument("--stage", required=True, choices=list(configs))
    parser.add_argument("--assembly", default="cdk.out", help="synthesized cloud assembly (default cdk.out)")
    parser.add_argument("--account", default=None, help="the account the stage is pinned to, if any")
    parser.add_argument("--quotas", action="store_true", help="print the stage's quota needs and exit")
    args = parser.parse_args(argv)
    if args.quotas:
        print(render_quotas(args.stage))
        return 0

    config = default_configs(account=args.account or None)[args.stage]
    manifest = Path(args.assembly) / f"assembly-{args.stage}" / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{manifest}: no synthesized {args.stage} stage; run "
                        f"`make preflight STAGE={args.stage}` (it synthesizes first)")
    from delivery.preflight.runner import run_checks

    client, session_region = _client_factory(config.region)
    rows = run_checks(config, assembly_dir=args.assembly, client=client, session_region=session_region)
    table, summary = render(rows, stage=args.stage)
    print(table)
    print(summary)
    step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        with open(step_summary, "a", encoding="utf-8") as out:
            out.write(f"### {summary}\n\n```\n{table}\n```\n")
    return 1 if any(r.status == FAIL for r in rows) else 0


if __name__ == "__main__":
    sys.exit(run(main))
