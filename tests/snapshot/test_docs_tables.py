"""The docs' tables of the repository's own stage values, against those values.

Like the template snapshots next to this file, these change when the
repository's stage values change (and only then): the unit tests assert what
a stage builds from whatever config it has, these assert that the figures
the docs print for *this repository's* stages are what its configs give.
After changing a stage, regenerate the figures with the command each failure
names and update the table (and the snapshots, `make test
ARGS=--snapshot-update`) in the same commit.
"""

from __future__ import annotations

import re

from delivery import cost
from delivery.assembly import templates_by_stack
from delivery.preflight import quotas
from ml_stacks.app_factory import PROJECT_ROOT
from ml_stacks.config import default_configs


def _table_after(page: str, marker: str, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the first table starting with ``header``
    after ``marker`` in ``docs/<page>``."""
    section = (PROJECT_ROOT / "docs" / page).read_text().split(marker, 1)[1]
    table = section.split(f"\n\n{header}", 1)[1].split("\n\n", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()[2:]]


def test_the_docs_quota_table_is_what_the_configs_need() -> None:
    rows = {row[0]: row[1:4] for row in _table_after("deploying.md", "### What each stage needs of the account's quotas",
                                                    "| quota |")}
    for column, stage in enumerate(("dev", "staging", "prod")):
        for need in quotas.quota_needs(default_configs()[stage]):
            key = next(k for k in rows if (need.code and f"`{need.code}`" in k)
                       or (not need.code and k.startswith("SageMaker")))
            cell = rows[key][column]
            assert f"{need.deploy} / {need.maximum}" in cell, (
                stage, need.name, cell, f"python -m delivery.preflight --stage {stage} --quotas")
            if not need.code:
                assert cell.startswith(f"`{need.name.split()[0]}`")


def test_the_docs_cost_table_is_what_make_cost_prints(synthesized) -> None:
    rows = {row[0]: row[1:3] for row in _table_after("costs.md", "## Costs that matter", "| stage |")}
    stages = cost.estimate(templates_by_stack(synthesized.outdir),
                           region_of=cost.regions_of([synthesized.outdir]))
    assert set(rows) == set(stages)
    for name, stage in stages.items():
        figures = [f"${round(stage.always_on):,}", f"${round(stage.maximum):,}"]
        assert rows[name] == figures, (name, "make cost")
