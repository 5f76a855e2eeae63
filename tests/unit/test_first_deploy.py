"""Deploy-time rules a brand-new account enforces that synth does not."""

from __future__ import annotations

import pytest

from tests.conftest import ALL_STACKS, resources_of_type


@pytest.mark.parametrize(("stage", "stack"), ALL_STACKS)
def test_no_function_reserves_concurrency(all_templates, stage, stack) -> None:
    # New accounts often have a Lambda concurrency limit of 10 (or 50), and a
    # reservation that leaves fewer than 10 unreserved is rejected: the stack
    # fails to deploy. Correctness must never depend on a reservation.
    functions = resources_of_type(all_templates[(stage, stack)], "AWS::Lambda::Function")
    reserved = {lid: f["Properties"]["ReservedConcurrentExecutions"]
                for lid, f in functions.items() if "ReservedConcurrentExecutions" in f["Properties"]}
    assert reserved == {}
