"""The unit prices docs/costs.md quotes are the price table `make cost` uses,
and the page names that table's date (one date for the whole page)."""

from __future__ import annotations

import json
import re

from tests.docs.markdown import PROJECT_ROOT

PAGE = (PROJECT_ROOT / "docs" / "costs.md").read_text()
PRICES = json.loads((PROJECT_ROOT / "delivery" / "prices" / "us-east-1.json").read_text())
# "g5.xlarge ~$1.01/hour", "ml.m5.large ~$0.115/hour", "| ml.g5.xlarge | 1–2 | ~$1.41/h |"
QUOTED = re.compile(r"\b((?:ml\.)?[a-z][a-z0-9-]*\.[0-9a-z]*(?:large|xlarge|metal))\b[^$\n]{0,40}?~\$(\d+\.\d+)/h")


def hourly(instance_type: str) -> float:
    table = PRICES["sagemaker_instance_hour" if instance_type.startswith("ml.") else "ec2_instance_hour"]
    return table[instance_type]


def test_every_quoted_instance_price_is_the_price_tables() -> None:
    quoted = QUOTED.findall(PAGE)
    assert len(quoted) >= 5
    wrong = [(t, p, hourly(t)) for t, p in quoted
             if round(hourly(t), len(p.split(".")[1])) != float(p)]
    assert wrong == []


def test_fixed_charges_are_the_price_tables() -> None:
    hours = PRICES["hours_per_month"]
    assert f"~${PRICES['nat_gateway_hour'] * hours:.2f}/month each + ${PRICES['nat_gateway_hour']}/GB" in PAGE
    assert f"~${PRICES['interface_endpoint_az_hour'] * hours:.2f}/month per AZ" in PAGE
    assert f"${PRICES['eks_cluster_hour']:.2f}/hour" in PAGE
    assert f"${PRICES['kms_key_month']:.0f}/month" in PAGE


def test_the_page_has_one_date_and_it_is_the_price_tables() -> None:
    dates = set(re.findall(r"\b20\d\d-\d\d-\d\d\b", PAGE))
    assert dates == {PRICES["retrieved"]}
    assert not re.search(r"\b(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* 20\d\d\b", PAGE)
