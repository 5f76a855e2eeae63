"""The cost-allocation tag the stage's budget filters on is active."""

from __future__ import annotations

from delivery.preflight import Result, passed, warned


def check_cost_allocation_tag(ce, *, tag_key: str | None) -> Result:
    """WARN unless ``tag_key`` is an active user-defined cost allocation tag:
    a budget filtering on an inactive tag reads $0 and never alerts."""
    name = "cost allocation tag"
    if tag_key is None:
        return passed(name, "the budget counts the whole account (no tag filter)")
    tags = []
    pages = ce.get_paginator("list_cost_allocation_tags").paginate(TagKeys=[tag_key], Type="UserDefined")
    for page in pages:
        tags += page["CostAllocationTags"]
    status = next((t["Status"] for t in tags if t["TagKey"] == tag_key), None)
    if status == "Active":
        return passed(name, f"{tag_key} is active; the budget filters on user:{tag_key}")
    shown = "not seen yet (no tagged usage)" if status is None else status
    return warned(name, f"{tag_key} is {shown}: the budget filters on user:{tag_key} and would read $0",
                  f"activate it (from the organization's management account if this one is a "
                  f"member): aws ce update-cost-allocation-tags-status "
                  f"--cost-allocation-tags-status TagKey={tag_key},Status=Active (tags appear up to "
                  "24 h after the first tagged resource)")
