"""How many examples a property test draws.

``make test`` draws every example a test asks for. ``make test-fast`` (the
inner loop) sets ``ML_TEST_FAST=1`` and draws a tenth of them, at least 25:
the same properties on the first examples of the same derandomized
sequence, so a failure there is a failure in ``make test`` too.
"""

from __future__ import annotations

import os

FAST = os.environ.get("ML_TEST_FAST") == "1"


def examples(count: int) -> int:
    """``count``, or a tenth of it (at least 25) under ``make test-fast``."""
    return max(25, count // 10) if FAST else count
