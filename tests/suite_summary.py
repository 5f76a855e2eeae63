"""The closing summary of ``make test``: tests passed and failed, wall time,
and the gates that ran (``--suite-summary``; loaded by tests/conftest.py).

A gate is a test marked ``@pytest.mark.gate("<name>")``; every test that
uses the session synthesis also runs the cdk-nag gate (an unacknowledged
finding fails that synthesis). Under pytest-xdist the gates travel from the
workers to the controller in each report's ``user_properties``, and only the
controller prints.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest

# Printed in this order; a gate none of whose tests ran is listed as "not run".
GATES = ("cdk-nag", "cfn-lint", "deterministic synth", "snapshots", "pinned CDK CLI", "offline make diff",
         "actionlint")
NAG = "cdk-nag"
_SYNTH_FIXTURES = frozenset({"synthesized", "all_templates"})
_ORDER = {"failed": 3, "error": 2, "passed": 1, "skipped": 0}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--suite-summary", action="store_true", default=False,
                     help="print tests passed/failed, wall time and the gates that ran at the very end")


def pytest_configure(config: pytest.Config) -> None:
    is_worker = hasattr(config, "workerinput")
    if config.getoption("suite_summary") and not is_worker:
        config.pluginmanager.register(SuiteSummary(config), "suite-summary")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        gates = [mark.args[0] for mark in item.iter_markers("gate")]
        if _SYNTH_FIXTURES & set(getattr(item, "fixturenames", ())):
            gates.append(NAG)
        item.user_properties.extend(("gate", gate) for gate in dict.fromkeys(gates))


class SuiteSummary:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.monotonic()
        self.outcomes: dict[str, str] = {}
        self.gates: dict[str, set[str]] = defaultdict(set)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            outcome = "error" if report.failed and report.when != "call" else report.outcome
            previous = self.outcomes.get(report.nodeid)
            if previous is None or _ORDER[outcome] > _ORDER[previous]:
                self.outcomes[report.nodeid] = outcome
        for name, value in report.user_properties:
            if name == "gate":
                self.gates[value].add(report.nodeid)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        wall = time.monotonic() - self.started
        counts = Counter(self.outcomes.values())
        workers = getattr(config.option, "numprocesses", None) or 0
        writer = config.get_terminal_writer()
        writer.sep("-", "make test summary")
        writer.line(f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
                    f"{counts['skipped']} skipped")
        writer.line(f"wall:  {wall:.1f} s ({f'{workers} xdist workers' if workers else 'one process'})")
        ran, not_run = [], []
        for gate in (*GATES, *sorted(set(self.gates) - set(GATES))):
            nodeids = self.gates.get(gate)
            if not nodeids:
                not_run.append(gate)
                continue
            bad = sum(self.outcomes.get(n) in ("failed", "error") for n in nodeids)
            ran.append(f"{gate} {'FAILED' if bad else 'passed'} ({len(nodeids)} tests)")
        writer.line("gates: " + ("; ".join(ran) if ran else "none ran"))
        if not_run:
            writer.line("not run: " + ", ".join(not_run))
