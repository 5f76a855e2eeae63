"""``python -m ml_runs``: submit, list, show, cancel and follow training runs.

The user's side of node_agent/RUNS_CONTRACT.md. Needs AWS credentials for
the stage's account; everything else it finds in the stage config and the
deployed training stack's outputs.
"""
