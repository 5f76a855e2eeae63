"""Delivery tooling: offline diff, stateful-replacement guard, cost estimate.

Everything here reads synthesized cloud assemblies (``cdk.out``) and makes
no AWS call, so it runs on a laptop or a pull-request runner without
credentials. Stacks are found by walking the assembly, never by name: a new
stack of a stage is covered as soon as it is synthesized.
"""
