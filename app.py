#!/usr/bin/env python3
"""CDK entry point. The only module that reads CDK context or the environment.

    -c stages=dev,prod     synthesize only these stages (default: all)
    -c account=123456789012  or CDK_DEFAULT_ACCOUNT: pin stacks to an account
                             (default: account-agnostic, concrete region)
    -c eks_public_access_cidrs=198.51.100.0/24,...
                             open dev's EKS API endpoint publicly to these CIDRs
                             only (default: private endpoint only)
"""

import os
import sys

import aws_cdk as cdk

from delivery.cli_errors import run

from ml_stacks.app_factory import build_app
from ml_stacks.config import default_configs, select_stages


def main() -> None:
    # Read context from a throwaway app: build_app owns the real one.
    context = cdk.App().node
    account = context.try_get_context("account") or os.environ.get("CDK_DEFAULT_ACCOUNT") or None
    cidrs = context.try_get_context("eks_public_access_cidrs") or ""
    cidrs = tuple(c.strip() for c in str(cidrs).split(",") if c.strip())
    stages = select_stages(default_configs(account=account, eks_public_access_cidrs=cidrs),
                           context.try_get_context("stages"))
    build_app(stages).synth()


if __name__ == "__main__":
    # A bad stage name or config value is one line, not a traceback.
    sys.exit(run(main))
