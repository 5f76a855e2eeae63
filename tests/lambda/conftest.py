"""Fixtures of the Lambda tests (``tests/lambda`` cannot be imported by name:
``lambda`` is a keyword, so the helpers live in ``tests/*.py``)."""

from tests.interruption_aws import aws  # noqa: F401  (pytest fixture)
