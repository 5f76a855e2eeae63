"""Check what a `make` target was given before the CDK CLI or AWS sees it.

    python -m delivery.stage_check --stages dev,prod      # STAGES of synth/cost/diff
    python -m delivery.stage_check --stage dev            # STAGE of deploy/diff/destroy...
    python -m delivery.stage_check --stage dev --credentials [--account 123456789012]

A bad stage name, missing or expired credentials, or credentials for another
account than the stage is pinned to each end in one line on stderr (through
``delivery.cli_errors``) instead of a traceback from ``app.py`` or the CDK
CLI's "Unable to resolve AWS account to use". Prints nothing on success,
except the identity with ``--credentials`` so the user sees where the command
is about to act.
"""

from __future__ import annotations

import argparse
import sys

from delivery.cli_errors import UserError, run
from ml_stacks.config import StageConfig, default_configs, select_stages


def stage_config(name: str, *, account: str | None = None) -> StageConfig:
    """The stage called ``name``, pinned to ``account`` if given (one-line error otherwise)."""
    if not name:
        raise UserError("STAGE is required, e.g. STAGE=dev")
    return select_stages(default_configs(account=account or None), name)[0]


def caller_account(sts) -> tuple[str, str]:
    """(account, ARN) of the credentials in use; botocore errors are reported by cli_errors."""
    identity = sts.get_caller_identity()
    return identity["Account"], identity["Arn"]


def check_account(config: StageConfig, account: str) -> None:
    if config.account and config.account != account:
        raise UserError(
            f"account: the credentials are for {account}, stage {config.name} is pinned to "
            f"{config.account} — switch AWS_PROFILE to that account or pin ACCOUNT={account}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", help="comma-separated stage names (empty: all)")
    parser.add_argument("--stage", help="one stage name")
    parser.add_argument("--account", default="", help="account the stage is pinned to")
    parser.add_argument("--credentials", action="store_true",
                        help="also check that AWS credentials resolve (STS GetCallerIdentity)")
    args = parser.parse_args(argv)
    if args.stages is not None:
        select_stages(default_configs(), args.stages)
    if args.stage is None:
        return 0
    config = stage_config(args.stage, account=args.account)
    if args.credentials:
        import boto3

        account, arn = caller_account(boto3.client("sts", region_name=config.region))
        check_account(config, account)
        print(f"{config.name}: account {account} as {arn}, region {config.region}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
