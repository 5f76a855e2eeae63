"""Reusable L3 constructs: each owns one capability and is composed by ml_stacks."""
